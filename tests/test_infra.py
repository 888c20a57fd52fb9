"""Infrastructure as code (infra/*.bicep, azure.yaml): it parses, it is wired up, checkov passes it, and it
gives the Function App every setting config.py reads.

No Bicep compiler installs from PyPI or npm (the Bicep CLI ships from GitHub/NuGet; its PyPI and npm
wrappers download it at run time), so the template is parsed with pycep, the Bicep parser checkov itself
uses, and checked the way a compiler would: module paths, module parameters and outputs, undeclared names.
checkov conflicts with the dev dependencies (it pins packaging<24, pytest needs >=24), so it lives in its
own virtual environment, .venv-checkov, made on first use (about a minute, once).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pypgstac
import pytest
import yaml
from pydantic import SecretStr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from config import Settings  # noqa: E402

pytestmark = pytest.mark.infra

INFRA = ROOT / "infra"
CHECKOV = "checkov==3.3.30"
CHECKOV_VENV = ROOT / ".venv-checkov"

# Settings config.py can read that the template must NOT set, and why.
NOT_SET_ON_AZURE = {
    "AzureWebJobsStorage": "a connection string: the identity-based AzureWebJobsStorage__* settings replace it",
    "AzureWebJobsStorage__clientId": "only for a user-assigned identity; the app's identity is system-assigned",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "local tracing only: on Azure the Application Insights connection string exports",
}
# Settings the template sets for the Functions host or the platform rather than for config.py.
HOST_SETTINGS = {"AzureWebJobsStorage__credential", "APPLICATIONINSIGHTS_CONNECTION_STRING",
                 "APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "PYTHON_THREADPOOL_THREAD_COUNT"}
# Settings whose template value differs from config.py's default on purpose; every other one restates it.
DEPLOYMENT_DECIDES = {"AzureWebJobsStorage__accountName", "AzureWebJobsStorage__blobServiceUri",
                      "AzureWebJobsStorage__queueServiceUri", "AzureWebJobsStorage__tableServiceUri",
                      "ALLOWED_CONTAINERS", "WORK_DIR", "PGSTAC_HOST", "PGSTAC_DBNAME", "PGSTAC_USER",
                      "PGSTAC_SSLMODE", "APPLICATIONINSIGHTS_CONNECTION_STRING"}
# PGSTAC_PASSWORD and WEBHOOK_SECRET are Key Vault references (checked below): config.py reads an unresolved
# reference as unset, so they load as the defaults here and the platform supplies the values at run time.
# Built-in role definition ids (the same in every tenant), by the names docs/operations.md uses.
BUILTIN_ROLES = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Storage Account Contributor": "17d1049b-9a84-46fb-8f53-869881c3d3ab",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}
KEYWORDS = {"param", "var", "resource", "module", "output", "targetScope", "existing", "if", "for", "in", "true",
            "false", "null", "string", "int", "bool", "object", "array"}

DUMP = """
import json, sys
from pathlib import Path
from pycep import BicepParser
parser, out = BicepParser(), {}
for path in sorted(Path(sys.argv[1]).rglob("*.bicep")):
    try:
        out[str(path.relative_to(sys.argv[1]))] = parser.parse(file_path=path)
    except Exception as exc:  # reported by the test
        out[str(path.relative_to(sys.argv[1]))] = {"error": f"{type(exc).__name__}: {exc}"}
print(json.dumps(out, default=str))
"""


# ---------------------------------------------------------------- the analyser's environment

def checkov_python() -> Path:
    """The Python of .venv-checkov, created with CHECKOV on first use (one creator at a time)."""
    python, marker = CHECKOV_VENV / "bin" / "python", CHECKOV_VENV / ".installed"
    lock = Path(tempfile.gettempdir()) / f"geoetl-checkov-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}.lock"
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if python.exists() and marker.exists() and marker.read_text() == CHECKOV:
            return python
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(CHECKOV_VENV)], check=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", CHECKOV],
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"pip install {CHECKOV} failed:\n{done.stderr[-3000:]}"
        marker.write_text(CHECKOV)
    return python


@pytest.fixture(scope="module")
def analyser() -> Path:
    return checkov_python()


@pytest.fixture(scope="module")
def bicep(analyser: Path) -> dict[str, Any]:
    """Every infra/*.bicep file as pycep's JSON, keyed by its path under infra/."""
    done = subprocess.run([str(analyser), "-c", DUMP, str(INFRA)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def run_checkov(analyser: Path, folder: Path) -> dict[str, Any]:
    """checkov's JSON report of the Bicep under ``folder``, offline (--skip-download: no severities)."""
    # checkov's Bicep graph resolves module parameters in hash order: a fixed seed makes runs repeatable
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run([str(analyser.parent / "checkov"), "-d", str(folder), "--framework", "bicep",
                           "--skip-download", "-o", "json"], capture_output=True, text=True, timeout=300, env=env)
    assert done.stdout.strip(), f"checkov printed nothing (exit {done.returncode}):\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout)
    return report[0] if isinstance(report, list) else report


# ---------------------------------------------------------------- helpers over the parsed template

def accessor(node: Any) -> list[str] | None:
    """``a.b.c`` as ['a', 'b', 'c'] when ``node`` is pycep's property accessor, else None."""
    parts: list[str] = []
    while isinstance(node, dict) and node.get("operator", {}).get("type") == "property_accessor":
        operands = node["operator"]["operands"]
        parts.append(operands["operand_1"])
        node = operands["operand_2"]
    if not parts or not isinstance(node, str):
        return None
    return [*parts, node]


def declared(template: dict[str, Any], text: str) -> set[str]:
    """Names a Bicep file declares: parameters, variables, resources, modules, outputs, loop variables."""
    names = {name for section in ("parameters", "variables", "resources", "modules", "outputs")
             for name in template.get(section) or {}}
    return names | set(re.findall(r"\bfor\s+(\w+)\s+in\b", text))


def code_only(text: str) -> str:
    """Bicep source without comments and string literals (interpolations ``${...}`` are kept as code)."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("//", i):
            i = text.find("\n", i) if "\n" in text[i:] else n
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
        elif text[i] == "'":
            i += 1
            out.append(" '")
            while i < n and text[i] != "'":
                if text[i] == "\\":
                    i += 2
                elif text.startswith("${", i):
                    end = text.index("}", i)
                    out.append(f" ({text[i + 2:end]}) ")
                    i = end + 1
                else:
                    i += 1
            out.append("' ")
            i += 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def undeclared_names(template: dict[str, Any], text: str) -> set[str]:
    """Identifiers used as values that the file never declares (what a Bicep compiler reports first)."""
    used = set()
    for match in re.finditer(r"(?<![\w.@])([A-Za-z_]\w*)(?!\w)(?=(\s*\()?)(:?)", code_only(text)):
        name, call, key = match.group(1), match.group(2), match.group(3)
        if not call and not key:
            used.add(name)
    return used - declared(template, text) - KEYWORDS


def app_settings(bicep: dict[str, Any]) -> dict[str, Any]:
    """The Function App's app settings, name -> pycep value."""
    site = bicep["modules/functionapp.bicep"]["resources"]["site"]["config"]
    entries = site["properties"]["siteConfig"]["appSettings"]
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), f"duplicate app settings: {sorted(n for n in names if names.count(n) > 1)}"
    return {entry["name"]: entry["value"] for entry in entries}


def settings_read_by_code() -> set[str]:
    """Every environment name config.Settings reads (each field's validation aliases but its own name)."""
    names = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", [alias] if alias else [])
        names |= {choice for choice in choices if isinstance(choice, str) and choice != field_name}
    return names


def missing_settings(template_names: set[str]) -> set[str]:
    """Settings the code reads that the template neither sets nor deliberately leaves out."""
    return settings_read_by_code() - template_names - set(NOT_SET_ON_AZURE)


def resolve(value: Any, names: dict[str, str]) -> Any:
    """A template value with main.bicep's storageNames filled in (``storageNames.x``, ``${storageNames.x}``)."""
    path = accessor(value)
    if path and path[0] == "storageNames":
        return names[path[1]]
    if isinstance(value, str):
        return re.sub(r"\$\{storageNames\.(\w+)\}", lambda m: names[m.group(1)], value)
    return value


def deploy_section() -> str:
    """The "Deploy to Azure" section of docs/operations.md (up to the next heading of its level or above)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    start = text.index("\n## Deploy to Azure\n") + 1
    end = min(i for i in (text.find("\n## ", start), text.find("\n# ", start), len(text)) if i > 0)
    return text[start:end]


# ---------------------------------------------------------------- tests

def test_every_file_parses_and_is_wired_up(bicep: dict[str, Any]) -> None:
    """The checks a Bicep compiler makes first: syntax, module paths, parameters, outputs, declared names."""
    assert set(bicep) >= {"main.bicep", "modules/storage.bicep", "modules/functionapp.bicep",
                          "modules/keyvault.bicep", "modules/postgres.bicep", "modules/monitoring.bicep",
                          "modules/roles.bicep"}
    problems = [f"{name}: {tpl['error']}" for name, tpl in bicep.items() if "error" in tpl]
    assert not problems, problems
    assert bicep["main.bicep"]["globals"]["scope"]["value"] == "subscription"
    for name, template in bicep.items():
        text = (INFRA / name).read_text()
        for module_name, module in (template.get("modules") or {}).items():
            target = (INFRA / name).parent / module["detail"]["path"]
            target_name = str(target.resolve().relative_to(INFRA))
            assert target_name in bicep, f"{name}: module {module_name} -> {target} does not exist"
            declared_params = bicep[target_name].get("parameters") or {}
            passed = set(module["config"].get("params") or {})
            required = {p for p, spec in declared_params.items() if spec.get("default") is None}
            assert passed <= set(declared_params), f"{name}: {module_name} gets unknown {passed - set(declared_params)}"
            assert required <= passed, f"{name}: {module_name} misses required {required - passed}"
            for output in re.findall(rf"\b{module_name}\.outputs\.(\w+)", text):
                assert output in (bicep[target_name].get("outputs") or {}), f"{name}: {module_name} has no {output}"
        assert not undeclared_names(template, text), f"{name} uses undeclared {undeclared_names(template, text)}"
        for resource_name, resource in (template.get("resources") or {}).items():
            assert re.fullmatch(r"[\w.]+/[\w/.]+", resource["type"]), (name, resource_name)
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", resource["api_version"]), (name, resource_name)


def test_the_structural_checks_can_fail(bicep: dict[str, Any]) -> None:
    """A typo in a name is reported (the check above is not vacuous)."""
    text = (INFRA / "modules/storage.bicep").read_text().replace("parent: blobService", "parent: blobServce")
    assert undeclared_names(bicep["modules/storage.bicep"], text) == {"blobServce"}


def test_azd_project_and_parameters(bicep: dict[str, Any]) -> None:
    """azure.yaml names the api service; main.parameters.json maps every required parameter, and nothing else."""
    project = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert project["services"]["api"] == {"project": ".", "language": "python", "host": "function"}
    assert project["infra"]["path"] == "infra"
    site = (INFRA / "modules/functionapp.bicep").read_text()
    assert "'azd-service-name': 'api'" in site, "azd finds the Function App by this tag"

    main = bicep["main.bicep"]["parameters"]
    mapped = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(mapped) <= set(main), f"unknown parameters: {set(mapped) - set(main)}"
    required = {name for name, spec in main.items() if spec.get("default") is None}
    assert required <= set(mapped), f"azd would prompt for {required - set(mapped)}"
    secure = {name for name, spec in main.items() if any(d["type"] == "secure" for d in spec["decorators"])}
    vault = bicep["modules/keyvault.bicep"]["resources"]
    secret_names = {res["config"]["name"] for res in vault.values() if res["type"].endswith("/secrets")}
    read_back = set()
    for name in secure:
        match = re.fullmatch(r"\$\(secretOrRandomPassword \$\{AZURE_KEY_VAULT_NAME\} ([\w-]+)\)", mapped[name]["value"])
        assert match, f"{name}: generated once by azd, then read back from the vault"
        read_back.add(match.group(1))
    assert read_back == secret_names
    assert "AZURE_KEY_VAULT_NAME" in bicep["main.bicep"]["outputs"]
    assert "GEOETL_URL" in bicep["main.bicep"]["outputs"], "the API base URL, as ./cli.py reads it"
    api_url = bicep["modules/functionapp.bicep"]["outputs"]["apiBaseUrl"]["value"]
    assert api_url == "https://${site.properties.defaultHostName}/api"


def test_every_setting_the_code_reads_is_in_the_template(bicep: dict[str, Any]) -> None:
    """config.Settings' environment names are app settings, except those NOT_SET_ON_AZURE says why not."""
    names = set(app_settings(bicep))
    assert not missing_settings(names), f"app settings missing from the template: {sorted(missing_settings(names))}"
    assert not names & set(NOT_SET_ON_AZURE), f"deliberately absent: {NOT_SET_ON_AZURE}"
    text = (INFRA / "modules/functionapp.bicep").read_text()
    assert all(name in text for name in NOT_SET_ON_AZURE), "say in the template why these are left out"
    unknown = names - settings_read_by_code() - HOST_SETTINGS
    assert not unknown, f"app settings nobody reads (a typo?): {sorted(unknown)}"
    # the check fails when a setting is dropped
    assert missing_settings(names - {"SWEEPER_GRACE_S"}) == {"SWEEPER_GRACE_S"}


def test_every_message_the_host_holds_has_a_worker_thread(bicep: dict[str, Any]) -> None:
    """The Python worker runs sync functions on PYTHON_THREADPOOL_THREAD_COUNT threads (min(32, cores + 4)
    when unset: 6 on 2 cores, which left group commit 1.7 table requests a task instead of 0.8); Azure and
    local.settings.json.example give it host.json's batchSize + newBatchThreshold."""
    queues = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    held = str(queues["batchSize"] + queues["newBatchThreshold"])
    local = json.loads((ROOT / "local.settings.json.example").read_text())["Values"]
    assert app_settings(bicep)["PYTHON_THREADPOOL_THREAD_COUNT"] == held
    assert local["PYTHON_THREADPOOL_THREAD_COUNT"] == held


def test_app_settings_are_valid_settings_and_name_what_is_created(bicep: dict[str, Any],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """As environment variables (what app settings become), the values load into config.Settings; they
    restate config.py's defaults except where the deployment decides; the queues, tables and containers they
    name are created; secrets are Key Vault references."""
    storage_names = bicep["main.bicep"]["variables"]["storageNames"]["value"]
    values = {name: resolve(value, storage_names) for name, value in app_settings(bicep).items()}
    env = {name: value if isinstance(value, str) else f"<{name}>" for name, value in values.items()}
    for name in settings_read_by_code():
        monkeypatch.delenv(name, raising=False)
    defaults = Settings()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.uses_identity and settings.service_uri("queue")

    differ = set()
    for field_name, field in Settings.model_fields.items():
        if getattr(settings, field_name) != getattr(defaults, field_name):
            differ |= {c for c in field.validation_alias.choices if c != field_name}
        if field.annotation is SecretStr:
            alias = next(c for c in field.validation_alias.choices if c != field_name)
            assert env[alias].startswith("@Microsoft.KeyVault(SecretUri=${"), f"{alias} must be a Key Vault reference"
    assert differ == DEPLOYMENT_DECIDES, f"config.py's default and the template disagree: {differ ^ DEPLOYMENT_DECIDES}"

    created = bicep["main.bicep"]["modules"]["storage"]["config"]["params"]
    queues = {resolve(q, storage_names) for q in created["queues"]}
    tables = {resolve(t, storage_names) for t in created["tables"]}
    containers = {resolve(c, storage_names) for c in created["containers"]}
    assert {settings.jobs_queue, settings.tasks_queue} <= queues
    assert {f"{settings.jobs_queue}-poison", f"{settings.tasks_queue}-poison"} <= queues
    assert {settings.jobs_table, settings.tasks_table, settings.schedules_table} <= tables
    assert {settings.payload_container, *settings.job_containers} <= containers
    assert storage_names["deploymentContainer"] in containers
    assert storage_names["deploymentContainer"] not in settings.job_containers


def test_resources_are_configured_as_required(bicep: dict[str, Any]) -> None:
    """Storage: identity only, TLS 1.2, https, no public blobs; Flex Consumption; Key Vault RBAC; PostGIS."""
    geo = {"Standard_GRS", "Standard_GZRS", "Standard_RAGRS", "Standard_RAGZRS"}
    skus = (bicep["modules/storage.bicep"]["parameters"]["skuName"],
            bicep["main.bicep"]["parameters"]["storageSkuName"])
    for sku in skus:
        allowed = next(d["argument"] for d in sku["decorators"] if d["type"] == "allowed")
        assert set(allowed) <= geo and sku["default"] in geo, "geo-redundant storage only (CKV_AZURE_206 is skipped)"
    account = bicep["modules/storage.bicep"]["resources"]["account"]["config"]["properties"]
    assert account["minimumTlsVersion"] == "TLS1_2" and account["supportsHttpsTrafficOnly"] is True
    assert account["allowBlobPublicAccess"] is False and account["allowSharedKeyAccess"] is False

    app = bicep["modules/functionapp.bicep"]["resources"]
    assert app["plan"]["config"]["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    site = app["site"]["config"]
    assert site["identity"] == {"type": "SystemAssigned"} and site["properties"]["httpsOnly"] is True
    flex = site["properties"]["functionAppConfig"]
    assert flex["runtime"] == {"name": "python", "version": "3.11"}
    assert flex["deployment"]["storage"]["authentication"] == {"type": "SystemAssignedIdentity"}
    assert flex["scaleAndConcurrency"] == {"instanceMemoryMB": "instanceMemoryMB",
                                           "maximumInstanceCount": "maximumInstanceCount"}
    assert {"instanceMemoryMB", "maximumInstanceCount", "postgresSkuName", "postgresStorageSizeGB", "location",
            "environmentName", "namePrefix"} <= set(bicep["main.bicep"]["parameters"])

    vault = bicep["modules/keyvault.bicep"]["resources"]["vault"]["config"]["properties"]
    assert vault["enableRbacAuthorization"] is True

    postgres = bicep["modules/postgres.bicep"]
    pgstac = pypgstac
    migration = Path(pgstac.__file__).parent / "migrations" / f"pgstac.{pgstac.__version__}.sql"
    wanted = {e.upper() for e in re.findall(r"CREATE EXTENSION IF NOT EXISTS (\w+)", migration.read_text(), re.I)}
    allowed = postgres["variables"]["pgstacExtensions"]["value"].split(",")
    assert wanted and wanted <= set(allowed), f"azure.extensions must allow {wanted - set(allowed)}"
    script = postgres["resources"]["pgstacMigrate"]
    assert script["type"] == "Microsoft.Resources/deploymentScripts"
    assert bicep["main.bicep"]["parameters"]["pypgstacVersion"]["default"] == pgstac.__version__
    pin = re.search(r"^pypgstac==([\d.*]+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert pgstac.__version__.startswith(pin.rstrip("*")), "the migration and the app use one pgstac version"
    assert "pypgstac.pypgstac migrate" in (INFRA / "scripts/pgstac-migrate.sh").read_text()

    funcignore = (ROOT / ".funcignore").read_text().split()
    assert {"infra", "azure.yaml", ".azure", ".venv-checkov"} <= set(funcignore)


def test_role_assignments_match_the_docs(bicep: dict[str, Any]) -> None:
    """The roles docs/operations.md lists for the app's identity and for the deployer are the ones the template
    assigns."""
    roles = bicep["modules/roles.bicep"]
    role_ids = roles["variables"]["roleIds"]["value"]
    assert set(role_ids.values()) <= set(BUILTIN_ROLES.values()), "a role id that is not the built-in role's"
    loops = {name: spec["value"] for name, spec in roles["variables"].items() if isinstance(spec["value"], list)}
    assigned: dict[str, set[str]] = {"appPrincipalId": set(), "deployerPrincipalId": set()}
    for resource in roles["resources"].values():
        if resource["type"] != "Microsoft.Authorization/roleAssignments":
            continue
        config = resource["config"]
        loop = config.get("loop_type")
        body = config.get("config", config)
        body = body.get("config", body)
        role = body["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
        items = loops[loop["detail"]["array_name"]] if loop else [role]
        assigned[body["properties"]["principalId"]] |= {role_ids[accessor(item)[1]] for item in items}

    documented: dict[str, set[str]] = {"appPrincipalId": set(), "deployerPrincipalId": set()}
    for row in re.findall(r"^\|([^|\n]+)\|([^|\n]+)\|", deploy_section(), re.M):
        who, role = row[0].strip().lower(), row[1].strip().strip("*")
        if role in BUILTIN_ROLES:
            key = "appPrincipalId" if who.startswith("function app") else "deployerPrincipalId"
            documented[key].add(BUILTIN_ROLES[role])
    assert documented["appPrincipalId"], "docs/operations.md lists the app identity's roles in a table"
    assert documented == assigned


def test_checkov_passes_with_justified_skips_only(analyser: Path, tmp_path: Path) -> None:
    """checkov finds nothing in infra/ (no severities offline: zero failed checks), every skip has a reason
    listed in docs/operations.md, and the same run fails a copy with https-only and TLS 1.2 taken out."""
    storage = tmp_path / "broken" / "storage.bicep"
    storage.parent.mkdir()
    storage.write_text((INFRA / "modules/storage.bicep").read_text()
                       .replace("supportsHttpsTrafficOnly: true", "supportsHttpsTrafficOnly: false")
                       .replace("minimumTlsVersion: 'TLS1_2'", "minimumTlsVersion: 'TLS1_0'"))
    good = tmp_path / "infra"
    shutil.copytree(INFRA, good)
    report = run_checkov(analyser, tmp_path)
    summary, results = report["summary"], report["results"]
    assert summary["parsing_errors"] == 0
    failed = [(c["check_id"], c["file_abs_path"]) for c in results["failed_checks"]]
    assert not [f for f in failed if f[1].startswith(str(good))], failed
    assert {c for c, path in failed if path == str(storage)} == {"CKV_AZURE_3", "CKV_AZURE_44"}
    passed = [c for c in results["passed_checks"] if c["file_abs_path"].startswith(str(good))]
    assert len(passed) >= 25, "checkov inspected the template"

    skips = re.findall(r"checkov:skip=(CKV\w*)(:?)(.*)", "\n".join(p.read_text() for p in INFRA.rglob("*.bicep")))
    assert skips and all(colon and len(reason.strip()) > 20 for _, colon, reason in skips), "each skip says why"
    section = deploy_section()
    listed = set(re.findall(r"CKV\w+", section))
    assert not {check for check, _, _ in skips} - listed, "docs/operations.md lists every skip"

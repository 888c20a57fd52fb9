/* geoetl dashboard: the submit form, generated from /api/job-types' JSON Schema. */
(() => {
  "use strict";

  const { KEY, API, TERMINAL, $, api, el, svg, shortId, age, clock, seconds, badge, setBadge, progressBar, setProgress, notice, describeError } = window.geoetl;
  const state = { jobTypes: [], onSubmitted: () => {} };

  // ------------------------------------------------------------------------------- submit form
  async function loadJobTypes() {
    const result = await api("GET", "/job-types");
    if (!result.ok) {
      notice(`Job types: ${describeError(result)}`, "bad");
      return;
    }
    state.jobTypes = result.data.job_types || [];
    const select = $("job-type");
    select.replaceChildren(...state.jobTypes.map((t) => {
      const option = el("option", null, t.job_type);
      option.value = t.job_type;
      return option;
    }));
    if (state.jobTypes.some((t) => t.job_type === "hello_world")) select.value = "hello_world";
    renderForm();
  }

  /** A property with $ref and nullable anyOf folded in: {schema, nullable}. */
  function resolve(prop, defs) {
    let schema = { ...prop };
    let nullable = false;
    if (schema.$ref) {
      const name = schema.$ref.split("/").pop();
      schema = { ...(defs[name] || {}), ...schema };
      delete schema.$ref;
    }
    if (Array.isArray(schema.anyOf)) {
      const real = schema.anyOf.filter((s) => s.type !== "null");
      nullable = real.length < schema.anyOf.length;
      if (real.length === 1) {
        const inner = resolve(real[0], defs).schema;
        schema = { ...inner, ...schema };
        delete schema.anyOf;
      }
    }
    return { schema, nullable };
  }

  function kindOf(schema) {
    if (Array.isArray(schema.enum)) return "enum";
    if (schema.type === "integer" || schema.type === "number") return "number";
    if (schema.type === "boolean") return "boolean";
    if (schema.type === "string") return "string";
    if (schema.type === "array" && schema.items && ["string", "integer", "number"].includes(schema.items.type)) return "list";
    return "json";
  }

  function renderForm() {
    const type = state.jobTypes.find((t) => t.job_type === $("job-type").value);
    const fields = $("fields");
    const advanced = $("advanced-fields");
    fields.replaceChildren();
    advanced.replaceChildren();
    $("form-error").hidden = true;
    if (!type) return;
    $("job-type-help").textContent = type.description;
    const params = type.parameters || {};
    const required = new Set(params.required || []);
    let advancedCount = 0;
    for (const [name, prop] of Object.entries(params.properties || {})) {
      const { schema, nullable } = resolve(prop, params.$defs || {});
      const field = buildField(name, schema, required.has(name), nullable);
      if ((schema.description || "").startsWith("Set by a ")) {
        advanced.appendChild(field);
        advancedCount += 1;
      } else {
        fields.appendChild(field);
      }
    }
    $("advanced").hidden = advancedCount === 0;
  }

  function buildField(name, schema, required, nullable) {
    const id = `f-${name}`;
    const kind = kindOf(schema);
    const wrap = el("div", `field k-${kind}`);
    wrap.dataset.name = name;
    wrap.dataset.kind = kind;
    wrap.dataset.itemType = kind === "list" ? schema.items.type : "";
    const label = el("label", null, schema.title || name);
    label.htmlFor = id;
    if (required) label.appendChild(el("span", "req", " (required)"));
    let control;
    if (kind === "enum") {
      control = el("select");
      if (!required || schema.default === undefined) {
        const blank = el("option", null, schema.default === undefined ? "(choose)" : "(default)");
        blank.value = "";
        control.appendChild(blank);
      }
      for (const value of schema.enum) {
        const option = el("option", null, value);
        option.value = String(value);
        control.appendChild(option);
      }
      if (schema.default !== undefined && schema.default !== null) control.value = String(schema.default);
    } else if (kind === "boolean") {
      control = el("input");
      control.type = "checkbox";
      control.checked = schema.default === true;
    } else if (kind === "list" || kind === "json") {
      control = el("textarea");
      control.rows = 2;
      if (kind === "json" && schema.default !== undefined && schema.default !== null) {
        control.value = JSON.stringify(schema.default);
      } else if (kind === "list" && Array.isArray(schema.default)) {
        control.value = schema.default.join("\n");
      }
    } else {
      control = el("input");
      control.type = kind === "number" ? "number" : "text";
      if (kind === "number") {
        control.step = schema.type === "integer" ? "1" : "any";
        if (schema.minimum !== undefined) control.min = String(schema.minimum);
        if (schema.maximum !== undefined) control.max = String(schema.maximum);
        control.inputMode = schema.type === "integer" ? "numeric" : "decimal";
      } else {
        if (schema.maxLength) control.maxLength = schema.maxLength;
        if (schema.format === "date-time") control.placeholder = "2024-01-31T12:00:00Z";
      }
      if (schema.default !== undefined && schema.default !== null) control.value = String(schema.default);
    }
    control.id = id;
    control.name = name;
    if (required) control.setAttribute("aria-required", "true");
    const help = [schema.description || ""];
    if (kind === "list") help.push("One value per line.");
    if (kind === "json") help.push("JSON.");
    if (nullable && kind !== "boolean") help.push("Leave empty for none.");
    const helpNode = el("p", "help", help.filter(Boolean).join(" "));
    helpNode.id = `${id}-help`;
    const errorNode = el("p", "field-error");
    errorNode.id = `${id}-error`;
    errorNode.hidden = true;
    control.setAttribute("aria-describedby", `${id}-error ${id}-help`);
    if (kind === "boolean") {
      const row = el("div", "check");
      row.append(control, label);
      wrap.append(row, errorNode, helpNode);
    } else {
      wrap.append(label, control, errorNode, helpNode);
    }
    return wrap;
  }

  /** The form's values as the parameters object; fields left empty are left out (defaults apply). */
  function formBody() {
    const body = {};
    for (const wrap of document.querySelectorAll("#submit-form .field[data-name]")) {
      const name = wrap.dataset.name;
      const control = wrap.querySelector("input, select, textarea");
      const kind = wrap.dataset.kind;
      if (kind === "boolean") {
        body[name] = control.checked;
        continue;
      }
      const raw = control.value.trim();
      if (raw === "") continue;
      if (kind === "number") {
        body[name] = Number(raw);
      } else if (kind === "list") {
        const values = raw.split(/\n|,/).map((v) => v.trim()).filter((v) => v !== "");
        body[name] = wrap.dataset.itemType === "string" ? values : values.map((v) => (Number.isFinite(Number(v)) ? Number(v) : v));
      } else if (kind === "json") {
        try {
          body[name] = JSON.parse(raw);
        } catch (_) {
          throw new FieldError(name, "not valid JSON");
        }
      } else {
        body[name] = raw;
      }
    }
    return body;
  }

  class FieldError extends Error {
    constructor(field, message) {
      super(message);
      this.field = field;
    }
  }

  function clearErrors() {
    for (const node of document.querySelectorAll("#submit-form .field-error")) {
      node.hidden = true;
      node.textContent = "";
    }
    for (const node of document.querySelectorAll("#submit-form [aria-invalid]")) node.removeAttribute("aria-invalid");
    $("form-error").hidden = true;
  }

  /** Show an error next to the field it names; false when no such field is on the form. */
  function fieldError(field, message) {
    const name = String(field || "").split(/[.[]/)[0];
    const control = name ? $(`f-${name}`) : null;
    if (!control) return false;
    const node = $(`f-${name}-error`);
    node.textContent = node.textContent ? `${node.textContent}; ${message}` : message;
    node.hidden = false;
    control.setAttribute("aria-invalid", "true");
    const details = control.closest("details");
    if (details) details.open = true;
    return true;
  }

  async function submitForm(event) {
    event.preventDefault();
    clearErrors();
    const jobType = $("job-type").value;
    let body;
    try {
      body = formBody();
    } catch (error) {
      fieldError(error.field, error.message);
      $(`f-${error.field}`).focus();
      return;
    }
    const button = $("submit-button");
    button.disabled = true;
    try {
      const result = await api("POST", `/jobs/submit/${encodeURIComponent(jobType)}`, body);
      if (result.ok) {
        const created = result.status === 202 ? "new job" : "existing job";
        notice(`Submitted ${jobType}: ${created} ${shortId(result.data.job_id)}${result.data.hint ? ` (${result.data.hint})` : ""}`, "good");
        await state.onSubmitted(result.data.job_id);
      } else {
        showSubmitError(result);
      }
    } catch (_) {
      showSubmitError({ status: 0, data: { error: "network", message: "the API did not answer" } });
    } finally {
      button.disabled = false;
    }
  }

  function showSubmitError(result) {
    const data = result.data || {};
    const unplaced = [];
    for (const error of data.errors || []) {
      if (!fieldError(error.field, error.message)) unplaced.push(`${error.field}: ${error.message}`);
    }
    const box = $("form-error");
    box.textContent = `${describeError(result)}${unplaced.length ? ` (${unplaced.join("; ")})` : ""}`;
    box.hidden = false;
    const invalid = document.querySelector("#submit-form [aria-invalid='true']");
    (invalid || box).focus();
    notice(`Submit refused: ${result.status} ${data.error || ""}`, "bad");
  }

  window.geoetl.form = {
    /** Load the job types and wire the form; ``onSubmitted(jobId)`` runs after each accepted submission. */
    start(onSubmitted) {
      state.onSubmitted = onSubmitted;
      $("job-type").addEventListener("change", renderForm);
      $("submit-form").addEventListener("submit", submitForm);
      return loadJobTypes();
    },
  };
})();

/* geoetl dashboard: plain JavaScript, no libraries, no build step.
 *
 * Every API call carries the function key the page was opened with (?code=) as the x-functions-key
 * header; the key is never written to the console, to the page, or into another URL.
 * Data from the API is put in the page with textContent only (never as HTML).
 */
(() => {
  "use strict";

  const KEY = new URLSearchParams(window.location.search).get("code") || "";
  const API = apiBase(window.location.pathname);
  const SVG_NS = "http://www.w3.org/2000/svg";
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);
  const JOB_POLL_MS = 1500;
  const TRIGGER_POLL_MS = 15000;
  const HEALTH_POLL_MS = 30000;
  const TASKS_PER_PAGE = 8;
  const JOBS_SHOWN = 25;

  const state = {
    jobs: [],
    rows: new Map(), // job_id -> <tr>
    statuses: new Map(), // job_id -> {key, doc}
    selected: null,
    taskTokens: [null], // continuation token of each page seen
    taskPage: 0,
    jobTypes: [],
    items: [],
    fitted: false,
    announced: new Map(),
    busy: false,
  };

  /** The API root: the path before /dashboard (host.json's routePrefix, "/api" by default). */
  function apiBase(path) {
    const at = path.toLowerCase().lastIndexOf("/dashboard");
    return at >= 0 ? path.slice(0, at) : "/api";
  }

  const $ = (id) => document.getElementById(id);

  /** Call the API; resolves to {status, ok, data}; a network failure rejects. */
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (KEY) headers["x-functions-key"] = KEY;
    const init = { method, headers, cache: "no-store", credentials: "same-origin", referrerPolicy: "no-referrer" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(API + path, init);
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = { error: "not_json", message: text.slice(0, 300) };
    }
    return { status: response.status, ok: response.ok, data };
  }

  /** An element with a class and text (text only: API data never becomes HTML). */
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    return node;
  }

  function shortId(id) {
    return id ? id.slice(0, 10) : "";
  }

  function age(iso) {
    if (!iso) return "";
    const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (seconds < 60) return `${Math.floor(seconds)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h`;
    return `${Math.floor(seconds / 86400)} d`;
  }

  function clock(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function seconds(value) {
    if (value === null || value === undefined) return "";
    return value < 10 ? `${value.toFixed(2)} s` : value < 120 ? `${value.toFixed(1)} s` : `${(value / 60).toFixed(1)} min`;
  }

  function badge(status) {
    return el("span", `badge s-${status}`, status);
  }

  function setBadge(node, status) {
    node.className = `badge s-${status}`;
    node.textContent = status;
  }

  /** A progress bar (role=progressbar) of 0-100. */
  function progressBar(label) {
    const bar = el("div", "bar");
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-label", label);
    bar.appendChild(el("span", "fill"));
    return bar;
  }

  function setProgress(bar, value, status) {
    const pct = Math.max(0, Math.min(100, Number(value) || 0));
    bar.setAttribute("aria-valuenow", String(pct));
    bar.setAttribute("aria-valuetext", `${pct.toFixed(0)} percent`);
    bar.dataset.status = status || "";
    bar.firstChild.style.width = `${pct}%`;
  }

  function notice(text, kind) {
    const node = $("notice");
    node.textContent = text;
    node.className = `notice ${kind || ""}`;
  }

  function describeError(result) {
    const data = result.data || {};
    if (result.status === 401 || result.status === 403) {
      return "the API wants a function key: open this page as …/dashboard/?code=<function key>";
    }
    return `${result.status} ${data.error || ""}: ${data.message || "no message"}`;
  }

  // ------------------------------------------------------------------------------------------ jobs
  async function refreshJobs() {
    const status = $("jobs-status").value;
    const query = `?limit=${JOBS_SHOWN}` + (status ? `&status=${encodeURIComponent(status)}` : "");
    const result = await api("GET", `/jobs${query}`);
    if (!result.ok) {
      notice(`Jobs: ${describeError(result)}`, "bad");
      return;
    }
    state.jobs = result.data.jobs || [];
    await Promise.all(state.jobs.map(refreshStatusOf));
    renderJobs();
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  /** Fetch a job's status document when it can have changed (running, or updated since last read). */
  async function refreshStatusOf(job) {
    const key = `${job.status}|${job.updated_at}`;
    const known = state.statuses.get(job.job_id);
    if (known && known.key === key && TERMINAL.has(job.status)) return;
    const result = await api("GET", `/jobs/status/${encodeURIComponent(job.job_id)}`);
    if (result.ok) state.statuses.set(job.job_id, { key, doc: result.data });
  }

  function jobRow(job) {
    let row = state.rows.get(job.job_id);
    if (!row) {
      row = el("tr");
      row.dataset.jobId = job.job_id;
      const open = el("button", "link job-open");
      open.type = "button";
      open.appendChild(el("span", "job-type"));
      open.appendChild(el("span", "id"));
      open.addEventListener("click", () => selectJob(job.job_id, true));
      const first = el("td");
      first.appendChild(open);
      const statusCell = el("td");
      statusCell.appendChild(el("span", "badge"));
      statusCell.appendChild(el("span", "stage-of"));
      const progressCell = el("td");
      const progressWrap = el("div", "progress-cell");
      progressWrap.append(progressBar(`progress of job ${shortId(job.job_id)}`), el("span", "pct"));
      progressCell.appendChild(progressWrap);
      const ageCell = el("td", "age");
      ageCell.appendChild(el("time"));
      row.append(first, statusCell, progressCell, ageCell);
      row.addEventListener("click", (event) => {
        if (event.target.closest("button") === null) selectJob(job.job_id, false);
      });
      state.rows.set(job.job_id, row);
    }
    const doc = (state.statuses.get(job.job_id) || {}).doc;
    const status = doc ? doc.status : job.status;
    const button = row.querySelector(".job-open");
    button.querySelector(".job-type").textContent = job.job_type;
    button.querySelector(".id").textContent = shortId(job.job_id);
    button.setAttribute("aria-label", `open ${job.job_type} job ${shortId(job.job_id)}, ${status}`);
    button.setAttribute("aria-current", state.selected === job.job_id ? "true" : "false");
    row.classList.toggle("selected", state.selected === job.job_id);
    setBadge(row.querySelector(".badge"), status);
    const stage = doc ? doc.stage : job.stage;
    row.querySelector(".stage-of").textContent = ` ${stage}/${job.total_stages}`;
    const pct = doc ? doc.progress : status === "completed" ? 100 : 0;
    setProgress(row.querySelector(".bar"), pct, status);
    row.querySelector(".pct").textContent = `${Math.round(pct)}%`;
    const time = row.querySelector("time");
    time.dateTime = job.created_at;
    time.textContent = age(job.created_at);
    time.title = clock(job.created_at);
    return row;
  }

  function renderJobs() {
    const body = $("jobs-body");
    const rows = state.jobs.map(jobRow);
    const current = Array.from(body.children);
    const same = current.length === rows.length && current.every((row, i) => row === rows[i]);
    if (!same) {
      const focused = document.activeElement;
      body.replaceChildren(...rows);
      if (focused && body.contains(focused)) focused.focus();
    }
    const shown = new Set(state.jobs.map((j) => j.job_id));
    for (const id of Array.from(state.rows.keys())) if (!shown.has(id)) state.rows.delete(id);
    $("jobs-empty").hidden = state.jobs.length > 0;
    for (const job of state.jobs) announceChange(job.job_id, job.job_type);
  }

  /** Say (aria-live) when a job the user is looking at changes status. */
  function announceChange(jobId, jobType) {
    const doc = (state.statuses.get(jobId) || {}).doc;
    if (!doc) return;
    const before = state.announced.get(jobId);
    state.announced.set(jobId, doc.status);
    if (before && before !== doc.status && jobId === state.selected) {
      $("announce").textContent = `${jobType} job ${shortId(jobId)} is now ${doc.status}`;
    }
  }

  // ------------------------------------------------------------------------------------- one job
  function selectJob(jobId, focusDetail) {
    if (state.selected !== jobId) {
      state.selected = jobId;
      state.taskTokens = [null];
      state.taskPage = 0;
    }
    for (const job of state.jobs) jobRow(job);
    refreshDetail().then(() => {
      if (focusDetail) $("detail-heading").focus();
    });
  }

  async function refreshDetail() {
    const jobId = state.selected;
    if (!jobId) return;
    const [status, tasks] = await Promise.all([
      api("GET", `/jobs/status/${encodeURIComponent(jobId)}`),
      api("GET", `/jobs/${encodeURIComponent(jobId)}/tasks?limit=${TASKS_PER_PAGE}` + tokenQuery()),
    ]);
    if (jobId !== state.selected) return;
    if (!status.ok) {
      notice(`Job ${shortId(jobId)}: ${describeError(status)}`, "bad");
      return;
    }
    const known = state.statuses.get(jobId);
    state.statuses.set(jobId, { key: known ? known.key : "", doc: status.data });
    renderDetail(status.data);
    if (tasks.ok) renderTasks(tasks.data);
  }

  function tokenQuery() {
    const token = state.taskTokens[state.taskPage];
    return token ? `&continuation=${encodeURIComponent(token)}` : "";
  }

  function renderDetail(doc) {
    $("detail-empty").hidden = true;
    $("detail-body").hidden = false;
    $("detail-heading").textContent = `Job: ${doc.job_type} ${shortId(doc.job_id)}`;
    setBadge($("d-status"), doc.status);
    $("d-stage").textContent = `${doc.stage} of ${doc.total_stages} (${doc.stage_name})`;
    const progress = $("d-progress");
    if (!progress.firstChild) {
      progress.appendChild(progressBar("progress of the open job"));
      progress.appendChild(el("span", "pct"));
    }
    setProgress(progress.querySelector(".bar"), doc.progress, doc.status);
    progress.querySelector(".pct").textContent = `${doc.progress.toFixed(1)}%`;
    $("d-created").textContent = `${age(doc.created_at)} ago`;
    $("d-created").title = clock(doc.created_at);
    $("d-attempts").textContent = `${doc.attempts} (retries ${doc.retries})`;
    $("d-id").textContent = doc.job_id;
    const error = $("d-error");
    error.hidden = !doc.error_details;
    error.textContent = doc.error_details || "";
    $("retry-button").disabled = doc.status !== "failed";
    $("cancel-button").disabled = TERMINAL.has(doc.status);

    const stages = $("d-stages");
    stages.replaceChildren(...doc.stages.map(stageItem));
    const errors = doc.recent_errors || [];
    $("d-errors-block").hidden = errors.length === 0;
    $("d-errors").replaceChildren(...errors.map(errorItem));
    const more = { parameters: doc.parameters };
    if (doc.result_data !== undefined && doc.result_data !== null) more.result_data = doc.result_data;
    if (doc.webhook) more.webhook = doc.webhook;
    $("d-more").textContent = JSON.stringify(more, null, 2);
  }

  function stageItem(stage) {
    const item = el("li", "stage");
    const head = el("div", "stage-head");
    head.appendChild(el("span", "stage-name", `${stage.stage}. ${stage.name}`));
    head.appendChild(badge(stage.status));
    let timing = stage.duration_s !== null && stage.duration_s !== undefined
      ? seconds(stage.duration_s)
      : stage.started_at ? `running ${age(stage.started_at)}` : "not started";
    if (typeof stage.progress === "number" && stage.status === "processing") timing = `${stage.progress.toFixed(0)}% · ${timing}`;
    head.appendChild(el("span", "stage-time", timing));
    item.appendChild(head);
    const counts = stage.tasks;
    const bar = el("div", "stack");
    bar.setAttribute("role", "img");
    const parts = ["completed", "failed", "cancelled", "processing", "queued"];
    const words = parts.filter((p) => counts[p]).map((p) => `${counts[p]} ${p}`);
    bar.setAttribute("aria-label", `stage ${stage.stage} tasks: ${words.join(", ") || "none yet"}`);
    for (const part of parts) {
      if (!counts.total || !counts[part]) continue;
      const segment = el("span", `seg t-${part}`);
      segment.style.width = `${(100 * counts[part]) / counts.total}%`;
      bar.appendChild(segment);
    }
    item.appendChild(bar);
    const ended = counts.completed + counts.failed + counts.cancelled;
    const summary = counts.total ? `${ended}/${counts.total} ended` : "no tasks yet";
    const extra = parts.filter((p) => counts[p] && p !== "completed").map((p) => `${counts[p]} ${p}`);
    item.appendChild(el("p", "stage-counts", [summary, ...extra, `${stage.attempts} attempts`].join(" · ")));
    return item;
  }

  function errorItem(error) {
    const item = el("li");
    if (error.error_code) item.appendChild(el("code", "code", error.error_code));
    item.appendChild(el("span", "task-id", error.task_id));
    item.appendChild(el("span", "tries", `${error.attempts} tries`));
    item.appendChild(el("span", "message", error.error));
    return item;
  }

  function renderTasks(page) {
    const rows = (page.tasks || []).map((task) => {
      const row = el("tr");
      row.appendChild(el("td", "mono", task.task_id.slice(13)));
      row.appendChild(el("td", null, task.task_type));
      const status = el("td");
      status.appendChild(badge(task.status));
      row.appendChild(status);
      row.appendChild(el("td", "num", task.attempts));
      const running = task.status === "processing" && typeof task.progress === "number";
      row.appendChild(el("td", "num", running ? `${Math.round(task.progress)}%` : seconds(task.duration_s)));
      const error = el("td", "task-error");
      if (task.error_code) error.appendChild(el("code", "code", task.error_code));
      if (task.last_error) error.appendChild(document.createTextNode(` ${task.last_error}`));
      row.appendChild(error);
      return row;
    });
    $("tasks-body").replaceChildren(...rows);
    state.taskTokens[state.taskPage + 1] = page.continuation || null;
    state.taskTokens.length = state.taskPage + 2;
    $("tasks-next").disabled = !page.continuation;
    $("tasks-first").disabled = state.taskPage === 0;
    const start = state.taskPage * TASKS_PER_PAGE;
    $("tasks-page").textContent = rows.length
      ? `tasks ${start + 1}–${start + rows.length} (page ${state.taskPage + 1})`
      : "no tasks yet";
  }

  async function act(action) {
    const jobId = state.selected;
    if (!jobId) return;
    const button = $(`${action}-button`);
    button.disabled = true;
    try {
      const result = await api("POST", `/jobs/${encodeURIComponent(jobId)}/${action}`);
      if (result.ok) {
        notice(`${action === "retry" ? "Retrying" : "Cancelled"} job ${shortId(jobId)}: ${result.data.status}`, "good");
      } else {
        notice(`${action} refused: ${describeError(result)}`, "bad");
      }
    } catch (_) {
      notice(`${action}: the API did not answer`, "bad");
    }
    await refreshAll();
  }

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
        state.selected = null;
        await refreshJobs();
        selectJob(result.data.job_id, false);
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

  // ------------------------------------------------------------------------ schedules, watches
  async function refreshTriggers() {
    await Promise.all([
      fillTable("schedules", "/schedules", (s) => [
        s.name || s.schedule_id, s.job_type, s.expression, clock(s.next_slot),
        s.last_error ? `refused: ${s.last_error}` : s.last_job_id ? `job ${shortId(s.last_job_id)}` : "none yet",
      ]),
      fillTable("watches", "/watches", (w) => [
        w.name || w.watch_id, `${w.container}/${w.prefix}`, w.job_type, w.source,
      ]),
    ]);
  }

  async function fillTable(kind, path, cells) {
    const note = $(`${kind}-note`);
    const table = $(`${kind}-table`);
    let result;
    try {
      result = await api("GET", path);
    } catch (_) {
      return;
    }
    if (result.status === 404 && (result.data || {}).error === "not_found") {
      note.textContent = `This server has no ${kind} API.`;
      note.hidden = false;
      table.hidden = true;
      return;
    }
    if (!result.ok) {
      note.textContent = `${kind}: ${describeError(result)}`;
      note.hidden = false;
      table.hidden = true;
      return;
    }
    const rows = (result.data[kind] || []).map((entry) => {
      const row = el("tr");
      for (const cell of cells(entry)) row.appendChild(el("td", null, cell));
      return row;
    });
    $(`${kind}-body`).replaceChildren(...rows);
    table.hidden = rows.length === 0;
    note.hidden = rows.length > 0;
    note.textContent = rows.length ? "" : `No ${kind}.`;
  }

  // --------------------------------------------------------------------------------------- health
  async function refreshHealth() {
    const node = $("health");
    try {
      const result = await api("GET", "/health");
      const data = result.data || {};
      const failing = data.failing || [];
      node.textContent = result.ok ? "healthy" : `unhealthy: ${failing.join(", ") || data.message || result.status}`;
      node.className = `health ${result.ok ? "good" : "bad"}`;
      return data;
    } catch (_) {
      node.textContent = "API unreachable";
      node.className = "health bad";
      return null;
    }
  }

  // ------------------------------------------------------------------------------------------ map
  /** Land rings from a TopoJSON topology (quantized, delta-encoded arcs), as [lon, lat] arrays. */
  function topologyRings(topology, objectName) {
    const [sx, sy] = topology.transform.scale;
    const [tx, ty] = topology.transform.translate;
    const arcs = topology.arcs.map((arc) => {
      let x = 0;
      let y = 0;
      return arc.map(([dx, dy]) => {
        x += dx;
        y += dy;
        return [x * sx + tx, y * sy + ty];
      });
    });
    const ring = (indexes) => {
      const points = [];
      for (const index of indexes) {
        const arc = index < 0 ? arcs[~index].slice().reverse() : arcs[index];
        points.push(...(points.length ? arc.slice(1) : arc));
      }
      return points;
    };
    const rings = [];
    for (const geometry of topology.objects[objectName].geometries) {
      const polygons = geometry.type === "Polygon" ? [geometry.arcs] : geometry.type === "MultiPolygon" ? geometry.arcs : [];
      for (const polygon of polygons) for (const r of polygon) rings.push(...planar(ring(r)));
    }
    return rings;
  }

  /** A ring on the sphere as rings on the flat map: a ring crossing the antimeridian is unwrapped
   * (longitudes made continuous) and drawn again 360 degrees over, so that each side shows; a ring
   * around a pole (Antarctica) is closed along the pole. */
  function planar(points) {
    const out = [];
    let shift = 0;
    let previous = null;
    for (const [lon, lat] of points) {
      if (previous !== null && Math.abs(lon + shift - previous) > 180) shift += lon + shift > previous ? -360 : 360;
      out.push([lon + shift, lat]);
      previous = lon + shift;
    }
    if (!out.length) return [];
    const [firstLon] = out[0];
    const [lastLon] = out[out.length - 1];
    if (Math.abs(lastLon - firstLon) > 180) {
      const pole = out.reduce((sum, p) => sum + p[1], 0) < 0 ? -90 : 90;
      out.push([lastLon, pole], [firstLon, pole]);
    }
    const lons = out.map((p) => p[0]);
    const rings = [out];
    if (Math.max(...lons) > 180) rings.push(out.map(([lon, lat]) => [lon - 360, lat]));
    if (Math.min(...lons) < -180) rings.push(out.map(([lon, lat]) => [lon + 360, lat]));
    return rings;
  }

  function ringsPath(rings) {
    return rings.map((r) => "M" + r.map(([lon, lat]) => `${lon.toFixed(2)},${(-lat).toFixed(2)}`).join("L") + "Z").join("");
  }

  function geometryRings(geometry) {
    if (!geometry) return [];
    if (geometry.type === "Polygon") return geometry.coordinates;
    if (geometry.type === "MultiPolygon") return geometry.coordinates.flat();
    return [];
  }

  async function loadLand() {
    const headers = KEY ? { "x-functions-key": KEY } : {};
    const response = await fetch(`${API}/dashboard/land-110m.json`, { headers, referrerPolicy: "no-referrer" });
    if (!response.ok) return;
    const topology = await response.json();
    $("land").replaceChildren(svg("path", { d: ringsPath(topologyRings(topology, "land")), class: "land" }));
  }

  function drawGraticule() {
    const lines = [];
    for (let lon = -150; lon <= 150; lon += 30) lines.push(`M${lon},-90V90`);
    for (let lat = -60; lat <= 60; lat += 30) lines.push(`M-180,${-lat}H180`);
    $("graticule").replaceChildren(svg("path", { d: lines.join(""), class: "graticule" }));
  }

  async function refreshItems(hasCatalogue) {
    const note = $("items-note");
    if (hasCatalogue === false) {
      note.textContent = "No STAC catalogue is configured (PGSTAC_HOST): nothing to draw.";
      $("map-desc").textContent = note.textContent;
      drawItems([]);
      return;
    }
    const collection = $("map-collection").value.trim();
    const query = "?limit=200" + (collection ? `&collection=${encodeURIComponent(collection)}` : "");
    const result = await api("GET", `/catalog/items${query}`);
    if (!result.ok) {
      note.textContent = result.status === 503 && (result.data || {}).error === "not_configured"
        ? "No STAC catalogue is configured (PGSTAC_HOST): nothing to draw."
        : `Catalogue: ${describeError(result)}`;
      drawItems([]);
      return;
    }
    const items = result.data.features || [];
    const collections = new Set(items.map((f) => f.collection));
    note.textContent = items.length
      ? `${items.length} item${items.length === 1 ? "" : "s"} in ${collections.size} collection${collections.size === 1 ? "" : "s"}`
      : "No catalogued items" + (collection ? ` in ${collection}` : "") + ".";
    $("map-desc").textContent = note.textContent;
    drawItems(items);
  }

  function drawItems(items) {
    state.items = items;
    const layer = $("footprints");
    const list = $("items");
    const shapes = [];
    const entries = [];
    items.forEach((item, index) => {
      const hue = colourOf(item.collection);
      const group = svg("g", { class: "footprint", "data-index": index });
      const rings = geometryRings(item.geometry);
      if (rings.length) group.appendChild(svg("path", { d: ringsPath(rings), fill: hue, stroke: hue, "vector-effect": "non-scaling-stroke" }));
      const box = item.bbox || [];
      if (box.length >= 4) {
        group.appendChild(svg("circle", { cx: (box[0] + box[2]) / 2, cy: -(box[1] + box[3]) / 2, r: 2.25, fill: hue, class: "marker" }));
      }
      const title = svg("title");
      title.textContent = `${item.id} (${item.collection})`;
      group.appendChild(title);
      shapes.push(group);
      const entry = el("li");
      const swatch = el("span", "swatch");
      swatch.style.background = hue;
      const button = el("button", "link", item.id);
      button.type = "button";
      button.setAttribute("aria-label", `zoom to item ${item.id} of ${item.collection}`);
      button.addEventListener("click", () => zoomTo(box, 4));
      entry.append(swatch, button, el("span", "muted", ` ${item.collection}`));
      entries.push(entry);
    });
    layer.replaceChildren(...shapes);
    list.replaceChildren(...entries.slice(0, 100));
    $("map-fit").disabled = items.length === 0;
    if (state.fitted) fitToItems();
    else setView(-180, -90, 360, 180);
  }

  const PALETTE = ["#c2410c", "#7c3aed", "#0f766e", "#be123c", "#1d4ed8", "#a16207"];
  const colours = new Map(); // collection -> colour, in the order collections are first seen
  function colourOf(name) {
    if (!colours.has(name)) colours.set(name, PALETTE[colours.size % PALETTE.length]);
    return colours.get(name);
  }

  function setView(x, y, width, height) {
    $("map").setAttribute("viewBox", `${x} ${y} ${width} ${height}`);
    const radius = Math.max(width / 160, 0.0005);
    for (const circle of document.querySelectorAll("#footprints circle")) circle.setAttribute("r", String(radius));
  }

  /** Zoom the map to lon/lat bounds (with a margin, at least ``minSpan`` degrees wide, 2:1). */
  function zoomTo(box, minSpan) {
    if (!box || box.length < 4) return;
    const [west, south, east, north] = box;
    let width = Math.max(east - west, minSpan) * 1.4;
    let height = Math.max(north - south, minSpan / 2) * 1.4;
    if (width < height * 2) width = height * 2;
    else height = width / 2;
    width = Math.min(width, 360);
    height = Math.min(height, 180);
    const cx = Math.min(Math.max((west + east) / 2, -180 + width / 2), 180 - width / 2);
    const cy = Math.min(Math.max(-(south + north) / 2, -90 + height / 2), 90 - height / 2);
    setView(cx - width / 2, cy - height / 2, width, height);
  }

  function fitToItems() {
    const boxes = state.items.map((i) => i.bbox).filter((b) => b && b.length >= 4);
    if (!boxes.length) return setView(-180, -90, 360, 180);
    zoomTo([Math.min(...boxes.map((b) => b[0])), Math.min(...boxes.map((b) => b[1])),
      Math.max(...boxes.map((b) => b[2])), Math.max(...boxes.map((b) => b[3]))], 10);
  }

  // ---------------------------------------------------------------------------------------- wiring
  async function refreshAll() {
    if (state.busy) return;
    state.busy = true;
    try {
      await refreshJobs();
      await refreshDetail();
    } catch (_) {
      notice("The API did not answer; retrying", "bad");
    } finally {
      state.busy = false;
    }
  }

  function every(ms, fn) {
    window.setInterval(() => {
      if ($("auto-refresh").checked && document.visibilityState !== "hidden") fn();
    }, ms);
  }

  async function start() {
    $("retry-button").addEventListener("click", () => act("retry"));
    $("cancel-button").addEventListener("click", () => act("cancel"));
    $("jobs-status").addEventListener("change", refreshAll);
    $("job-type").addEventListener("change", renderForm);
    $("submit-form").addEventListener("submit", submitForm);
    $("tasks-next").addEventListener("click", () => {
      state.taskPage += 1;
      refreshDetail();
    });
    $("tasks-first").addEventListener("click", () => {
      state.taskPage = 0;
      refreshDetail();
    });
    $("map-form").addEventListener("submit", (event) => {
      event.preventDefault();
      refreshItems(undefined);
    });
    $("map-fit").addEventListener("click", () => {
      state.fitted = !state.fitted;
      $("map-fit").setAttribute("aria-pressed", String(state.fitted));
      $("map-fit").textContent = state.fitted ? "Whole world" : "Zoom to items";
      if (state.fitted) fitToItems();
      else setView(-180, -90, 360, 180);
    });
    drawGraticule();
    const health = refreshHealth();
    await Promise.all([loadJobTypes(), refreshAll(), refreshTriggers(), loadLand().catch(() => {})]);
    const checks = ((await health) || {}).checks;
    await refreshItems(checks ? "database" in checks : undefined);
    document.body.dataset.ready = "true";
    every(JOB_POLL_MS, refreshAll);
    every(TRIGGER_POLL_MS, refreshTriggers);
    every(HEALTH_POLL_MS, refreshHealth);
  }

  start().catch(() => notice("The dashboard could not start: the API did not answer", "bad"));
})();

/* geoetl dashboard: jobs, one job (stages, errors, tasks, retry, cancel), schedules and watches, health;
 * then the form (form.js) and the map (map.js). Helpers are in common.js. */
(() => {
  "use strict";

  const { KEY, API, TERMINAL, $, api, el, svg, shortId, age, clock, seconds, badge, setBadge, progressBar, setProgress, notice, describeError } = window.geoetl;
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
    announced: new Map(),
    busy: false,
  };

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
      open.append(el("span", "job-type"), document.createTextNode(" "), el("span", "id"));
      open.addEventListener("click", () => selectJob(job.job_id, true));
      const first = el("td");
      first.appendChild(open);
      const statusCell = el("td", "status-cell");
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
    for (const id of Array.from(state.statuses.keys())) {
      if (!shown.has(id) && id !== state.selected) state.statuses.delete(id);
    }
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

  /** After the form's submission: show the new job, open. */
  async function showSubmitted(jobId) {
    state.selected = null;
    await refreshJobs();
    selectJob(jobId, false);
  }

  async function start() {
    $("retry-button").addEventListener("click", () => act("retry"));
    $("cancel-button").addEventListener("click", () => act("cancel"));
    $("jobs-status").addEventListener("change", refreshAll);
    $("tasks-next").addEventListener("click", () => {
      state.taskPage += 1;
      refreshDetail();
    });
    $("tasks-first").addEventListener("click", () => {
      state.taskPage = 0;
      refreshDetail();
    });
    const health = refreshHealth();
    await Promise.all([window.geoetl.form.start(showSubmitted), refreshAll(), refreshTriggers()]);
    const checks = ((await health) || {}).checks;
    await window.geoetl.map.start(checks ? "database" in checks : undefined);
    document.body.dataset.ready = "true";
    every(JOB_POLL_MS, refreshAll);
    every(TRIGGER_POLL_MS, refreshTriggers);
    every(HEALTH_POLL_MS, refreshHealth);
  }

  start().catch(() => notice("The dashboard could not start: the API did not answer", "bad"));
})();


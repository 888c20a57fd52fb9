/* geoetl dashboard, shared part: the API client and small DOM helpers (plain JavaScript, no libraries).
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


  window.geoetl = { KEY, API, TERMINAL, $, api, el, svg, shortId, age, clock, seconds, badge, setBadge, progressBar, setProgress, notice, describeError };
})();

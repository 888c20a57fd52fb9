/* geoetl dashboard: catalogued items' footprints on an equirectangular SVG world map
 * (land: Natural Earth 1:110m from world-atlas, TopoJSON decoded here). */
(() => {
  "use strict";

  const { KEY, API, TERMINAL, $, api, el, svg, shortId, age, clock, seconds, badge, setBadge, progressBar, setProgress, notice, describeError } = window.geoetl;
  const state = { items: [], fitted: false };

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

  window.geoetl.map = {
    /** Draw the world and the items; ``hasCatalogue`` false: say so without asking the API. */
    async start(hasCatalogue) {
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
      await loadLand().catch(() => {});
      await refreshItems(hasCatalogue);
    },
  };
})();

// A small inline-SVG line chart: no library, no network (the service may run offline).

const NS = "http://www.w3.org/2000/svg";

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// points: [{x, y}] in data units; options: formatX, formatY, label, marks ([{x, color, title}]), step (staircase).
export function lineChart(svg, points, options = {}) {
  const width = 480, height = 180;
  const pad = { left: 48, right: 12, top: 12, bottom: 26 };
  const formatX = options.formatX || ((v) => String(v));
  const formatY = options.formatY || ((v) => String(v));
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  svg.dataset.points = String(points.length);

  if (points.length === 0) {
    svg.append(el("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "chart-empty" }, options.empty || "데이터 없음"));
    svg.setAttribute("aria-label", `${options.label || "차트"}: 데이터 없음`);
    return;
  }

  let xMin = Math.min(...points.map((p) => p.x)), xMax = Math.max(...points.map((p) => p.x));
  let yMin = Math.min(...points.map((p) => p.y)), yMax = Math.max(...points.map((p) => p.y));
  if (options.yFromZero) yMin = Math.min(0, yMin);
  if (xMax === xMin) { xMin -= 1; xMax += 1; }
  if (yMax === yMin) { yMin -= 1; yMax += 1; }
  const sx = (x) => pad.left + ((x - xMin) / (xMax - xMin)) * (width - pad.left - pad.right);
  const sy = (y) => height - pad.bottom - ((y - yMin) / (yMax - yMin)) * (height - pad.top - pad.bottom);

  // Axes with min/max labels: enough to read the scale without clutter.
  const axis = el("g", { class: "chart-axis" });
  axis.append(
    el("line", { x1: pad.left, y1: height - pad.bottom, x2: width - pad.right, y2: height - pad.bottom }),
    el("line", { x1: pad.left, y1: pad.top, x2: pad.left, y2: height - pad.bottom }),
    el("text", { x: pad.left - 4, y: sy(yMax) + 4, "text-anchor": "end" }, formatY(yMax)),
    el("text", { x: pad.left - 4, y: sy(yMin), "text-anchor": "end" }, formatY(yMin)),
    el("text", { x: pad.left, y: height - 8, "text-anchor": "start" }, formatX(xMin)),
    el("text", { x: width - pad.right, y: height - 8, "text-anchor": "end" }, formatX(xMax)),
  );
  svg.append(axis);

  for (const mark of options.marks || []) {
    if (mark.x < xMin || mark.x > xMax) continue;
    const line = el("line", { x1: sx(mark.x), x2: sx(mark.x), y1: pad.top, y2: height - pad.bottom, class: "chart-mark", stroke: mark.color || "#999" });
    line.append(el("title", {}, mark.title || ""));
    svg.append(line);
  }

  let d = "";
  points.forEach((p, i) => {
    if (i === 0) d += `M${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`;
    else if (options.step) d += `H${sx(p.x).toFixed(1)}V${sy(p.y).toFixed(1)}`;
    else d += `L${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`;
  });
  svg.append(el("path", { d, class: "chart-line", fill: "none" }));
  const last = points[points.length - 1];
  // Few points: mark each one, so a short run's steps are visible.
  const dots = points.length <= 60 && !options.step ? points : [last];
  for (const p of dots) svg.append(el("circle", { cx: sx(p.x), cy: sy(p.y), r: 3, class: "chart-dot" }));
  svg.setAttribute("aria-label",
    `${options.label || "차트"}: ${points.length}개 지점, 처음 ${formatY(points[0].y)}, 마지막 ${formatY(last.y)}`);
}

// Conversations collected over time, for the admin chart: no route gives that history,
// so it is rebuilt once from the latest conversations' timestamps, then extended with the
// polled totals.

import { lineChart } from "./charts.js";
import { $, fmtClock, fmtTime } from "./dom.js";

const RUN_COLOR = { promoted: "#2e7d32", rejected: "#ed6c02", failed: "#c62828", running: "#1565c0" };

export class CollectionHistory {
  constructor(admin) {
    this.admin = admin; // an authenticated request
    this.reset();
  }

  reset() {
    this.samples = []; // [{x: unix seconds, y: total collected}]
    this.backfilled = false;
    this.drawnKey = null;
  }

  add(x, y) {
    const last = this.samples[this.samples.length - 1];
    if (last && y < last.y) this.reset(); // data was cleared: start over
    if (!last || last.y !== y || x - last.x > 30) this.samples.push({ x, y });
    if (this.samples.length > 2000) this.samples = this.samples.slice(-2000);
  }

  async backfill(total) {
    this.backfilled = true;
    try {
      const page = await this.admin("mlops/conversations?limit=1000");
      const times = page.conversations.map((t) => t.created_at).sort((a, b) => a - b);
      const start = total - times.length;
      const history = times.map((x, i) => ({ x, y: start + i + 1 }));
      const firstPolled = this.samples.length ? this.samples[0].x : Infinity;
      this.samples = history.filter((p) => p.x < firstPolled).concat(this.samples);
    } catch (err) {
      if (err.status === 401) throw err;
    }
  }

  draw(runs) {
    const samples = this.samples;
    const points = samples.slice();
    const now = Date.now() / 1000;
    if (points.length) points.push({ x: now, y: points[points.length - 1].y });
    const key = JSON.stringify([samples.length, samples[samples.length - 1], runs.length, Math.floor(now / 10)]);
    if (this.drawnKey === key) return;
    this.drawnKey = key;
    const span = points.length ? now - points[0].x : 0;
    lineChart($("collection-chart"), points, {
      label: "누적 수집 대화 수", step: true, yFromZero: true,
      formatX: (v) => (span > 86400 ? fmtTime(v) : fmtClock(v)), formatY: (v) => `${Math.round(v)}건`,
      marks: runs.filter((r) => r.outcome !== "empty").map((r) => ({
        x: r.started_at, color: RUN_COLOR[r.outcome] || "#777", title: `실행 #${r.run_id}: ${r.outcome}`,
      })),
      empty: "아직 수집된 대화가 없습니다",
    });
  }
}

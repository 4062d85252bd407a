import { test } from "node:test";
import assert from "node:assert/strict";
import { chartFigures, chartHeading, niceAxis, renderChartSvg, type ChartFigure } from "../../bench/lib/chart.js";

const s = (label: string, unit: string, n: number, median: number | null, min: number | null, max: number | null) => ({ label, unit, n, median, min, max });

/** A results document shaped like bench/run.ts writes it, cut down, with a third handler and a section the extractor does not know. */
const results = {
  startedAt: "2026-11-23T21:36:02.137Z",
  runs: 5,
  warmup: 1,
  host: { cpu: "AMD EPYC", cpus: 2, qemu: "QEMU emulator version 7.2.22", node: "v20.20.2" },
  sectionMs: { setupAndBoot: 1, containerd: 2, cri: 3 },
  containerd: {
    kernel: "generic",
    accel: "tcg",
    summary: {
      ctr_run_hako: s("ctr run --rm hako /bin/true", "ms", 5, 4789, 4611, 4977),
      ctr_run_runc: s("ctr run --rm runc /bin/true", "ms", 5, 102, 98.9, 113.8),
      ratio_hako_runc: s("ratio hako / runc (paired)", "x", 5, 45.7, 43.7, 50.1),
      shim_pss: s("hako shim PSS", "MiB", 1, 34.9, 34.9, 34.9),
      runc_shim_pss: s("runc shim PSS", "MiB", 1, 11.9, 11.9, 11.9),
    },
  },
  cri: {
    kernel: "generic",
    accel: "tcg",
    start: {
      pod_start_hako: s("hako: pod start", "ms", 5, 4735, 4634, 5068),
      "pod_start_hako-template": s("hako-template: pod start", "ms", 5, 900, 850, 990),
      pod_start_runc: s("runc: pod start", "ms", 5, 120, 97.8, 144.5),
      ratio_hako_runc: s("ratio hako / runc (paired)", "x", 5, 41.3, 32.8, 47.4),
      hako_runPodSandbox: s("hako: RunPodSandbox", "ms", 5, 4188, 4144, 4334),
    },
    memory: {
      hako_pod_pss: s("hako pod PSS", "MiB", 10, 348.2, 346.4, 435.3),
      hako_qemu_pss: s("  its QEMU PSS", "MiB", 10, 332.9, 331.3, 420),
      runc_pod_pss: s("runc pod PSS", "MiB", 10, 3.89, 3.8, 4.29),
      "hako-template_pod_pss": s("hako-template pod PSS", "MiB", 10, 101.5, 99, 130),
      "hako-template_qemu_pss": s("  its QEMU PSS", "MiB", 10, 88, 86, 117),
      // A handler that measured nothing: JSON writes its NaN median as null.
      "hako-template_pod_start": s("hako-template pod start while the others idle", "ms", 0, null, null, null),
      runc_pod_start: s("runc pod start while the others idle", "ms", 10, 150, 120, 170),
    },
    density: { hako: { pods: 10 }, "hako-template": { pods: 10 }, runc: { pods: 10 } },
    // As cri-report.ts writes them; met is null for a target whose figures were not measured.
    targets: [
      { name: "hako-template pod start ≤ 0.25 × hako (cold) pod start", short: "template ≤ 0.25× cold", metric: "pod_start", value: 0.19, limit: 0.25, unit: "x", met: true },
      { name: "hako-template pod start ≤ 3 × runc pod start", short: "template ≤ 3× runc", metric: "pod_start", value: 7.5, limit: 3, unit: "x", met: false },
      { name: "hako-template PSS per idle pod ≤ 90 MiB", short: "template ≤ 90 MiB", metric: "pod_pss", value: 101.2, limit: 90, unit: "MiB", met: false },
      { name: "hako (cold) PSS per idle pod ≤ 150 MiB", short: "cold ≤ 150 MiB", metric: "pod_pss", value: null, limit: 150, unit: "MiB", met: null },
    ],
  },
  io: {
    summary: {
      seq_read_hako: s("hako: sequential read <4 KiB & \"direct\">", "MiB/s", 3, 210, 200, 230),
      seq_read_runc: s("runc: sequential read", "MiB/s", 3, 900, 880, 950),
      seq_read_ratio: s("ratio", "x", 3, 0.23, 0.2, 0.25),
    },
  },
  kernels: [
    {
      kernel: "generic",
      accel: "tcg",
      target: { limit: 1.25 },
      summary: {
        floor: s("floor", "ms", 5, 1736, 1700, 1800),
        run: s("hako run", "ms", 5, 5147, 4800, 5300),
        agent_ready: s("agent ready", "ms", 5, 3764, 3500, 4100),
      },
    },
    { kernel: "minimal", summary: { run: s("hako run", "ms", 0, null, null, null) } },
  ],
};

test("the extractor finds every hako-vs-baseline pair, baseline last, and skips ratios and empty metrics", () => {
  const figures = chartFigures(results);
  assert.deepEqual(
    figures.map((f) => [f.unit, f.bars.map((b) => `${b.label}${b.baseline ? "*" : ""}`).join(",")]),
    [
      ["ms", "hako run /bin/true,floor + agent start*"],
      ["ms", "hako,runc*"],
      ["MiB", "hako,runc*"],
      ["ms", "hako,hako-template,runc*"],
      ["MiB", "hako,hako-template,runc*"],
      ["MiB/s", "hako,runc*"],
    ],
  );
  assert.match(figures[0]!.title, /kernel generic, accel tcg/);
  assert.match(figures[0]!.note ?? "", /floor \(QEMU boot to init\) 1736 ms; target ≤ 1\.25×/);
  assert.equal(figures[3]!.title, "CRI pod start (RunPodSandbox → container's first log line): hako / hako-template / runc");
  assert.deepEqual(figures[3]!.bars[1], { label: "hako-template", median: 900, min: 850, max: 990 });
  assert.match(figures[4]!.note ?? "", /10 idle pods per runtime; hako, hako-template: shim \+ QEMU/);
  // Each cri target goes with the figure it judges; the others have none.
  assert.deepEqual(figures[3]!.targets, [
    { text: "template ≤ 0.25× cold: 0.19×", met: true },
    { text: "template ≤ 3× runc: 7.50×", met: false },
  ]);
  assert.deepEqual(figures[4]!.targets, [
    { text: "template ≤ 90 MiB: 101 MiB", met: false },
    { text: "cold ≤ 150 MiB: n/a", met: undefined },
  ]);
  assert.deepEqual(figures.filter((f) => f.targets !== undefined).length, 2);
  // The unknown section's title comes from its label, the handler prefix dropped.
  assert.equal(figures[5]!.title, 'io: sequential read <4 KiB & "direct">: hako vs runc');
  // One sample each: no whiskers to speak of.
  assert.equal(figures[2]!.note, "the shim process only (hako's QEMU is not in it); 1 sample each");
});

test("absent or malformed sections give fewer figures, never an error", () => {
  assert.deepEqual(chartFigures({}), []);
  assert.deepEqual(chartFigures(null), []);
  assert.deepEqual(chartFigures([1, 2]), []);
  assert.deepEqual(chartFigures({ kernels: "x", containerd: 3, cri: { start: [], memory: null } }), []);
  const onlyCri = chartFigures({ cri: { start: results.cri.start } });
  assert.equal(onlyCri.length, 1);
  assert.equal(chartHeading({}).title, "hako bench");
  assert.match(chartHeading(results).subtitle ?? "", /2 × AMD EPYC · accel tcg · 5 runs \+ 1 warm-up/);
});

test("the axis ends on a round number at or above the largest value", () => {
  assert.deepEqual(niceAxis(5147), { top: 6000, step: 2000 });
  assert.deepEqual(niceAxis(34.9), { top: 40, step: 10 });
  assert.deepEqual(niceAxis(435.3), { top: 500, step: 100 });
  assert.deepEqual(niceAxis(0), { top: 1, step: 0.25 });
});

/** Open and close tags match up (a stack over the tags, self-closing ones skipped); returns the element names seen. */
function checkBalanced(svg: string): string[] {
  const stack: string[] = [];
  const seen: string[] = [];
  for (const m of svg.matchAll(/<(\/?)([a-zA-Z][\w-]*)[^>]*?(\/?)>/g)) {
    const [, closing, name, selfClosing] = m;
    if (closing) assert.equal(stack.pop(), name, `</${name}> closes the wrong element`);
    else {
      seen.push(name!);
      if (!selfClosing) stack.push(name!);
    }
  }
  assert.deepEqual(stack, [], "unclosed elements");
  return seen;
}

test("the SVG is well-formed and self-contained: one panel per figure, escaped text, ratios next to non-baseline bars", () => {
  const figures: ChartFigure[] = [
    ...chartFigures(results),
    { title: "a <b> & 'c'", unit: "ms", bars: [{ label: 'x"<y>', median: 3, min: 2, max: 4 }, { label: "base", median: 1.5, min: 1, max: 2, baseline: true }] },
  ];
  const svg = renderChartSvg(figures, chartHeading(results));
  const elements = checkBalanced(svg);
  assert.equal(svg.match(/<g class="panel"/g)?.length, figures.length);
  assert.equal(elements.filter((e) => e === "svg").length, 1);
  for (const e of ["script", "image", "style", "a", "foreignObject"]) assert.ok(!elements.includes(e), `no <${e}>`);
  assert.ok(!/href|url\(|@import/.test(svg), "no external references");
  // Text content holds no raw markup characters: every < starts a tag.
  assert.ok(!/<[^a-zA-Z/]/.test(svg));
  assert.ok(svg.includes("a &lt;b&gt; &amp; 'c'"));
  assert.ok(svg.includes("x&quot;&lt;y&gt;"));
  assert.ok(svg.includes("io: sequential read &lt;4 KiB &amp; &quot;direct&quot;&gt;"));
  // Ratios of medians: 5147/3764, 4789/102 ≈ 46.95, 4735/120, 900/120, 3/1.5.
  for (const r of ["1.37× baseline", "47.0× baseline", "39.5× baseline", "7.50× baseline", "2.00× baseline"]) assert.ok(svg.includes(r), r);
  const ratios = svg.match(/class="ratio"/g)?.length;
  const nonBaseline = figures.reduce((acc, f) => acc + f.bars.filter((b) => !b.baseline).length, 0);
  assert.equal(ratios, nonBaseline);
  // The targets' lines, each verdict in its colour: met green, missed red, unmeasured grey.
  assert.equal(svg.match(/class="targets"/g)?.length, 2);
  assert.ok(svg.includes('<tspan fill="#2e7d32" dx="6">template ≤ 0.25× cold: 0.19× met</tspan>'));
  assert.ok(svg.includes('<tspan fill="#c62828" dx="10">template ≤ 3× runc: 7.50× NOT met</tspan>'));
  assert.ok(svg.includes('<tspan fill="#777" dx="10">cold ≤ 150 MiB: n/a not measured</tspan>'));
  // Whiskers where the samples spread, none for the single-sample shim PSS bars.
  const whiskers = svg.match(/class="whisker"/g)?.length;
  assert.equal(whiskers, figures.reduce((acc, f) => acc + f.bars.filter((b) => b.max > b.min).length, 0));
});

test("a figure without a baseline has no ratios; no figures still makes a valid SVG", () => {
  const svg = renderChartSvg([{ title: "t", unit: "ms", bars: [{ label: "a", median: 1, min: 1, max: 1 }, { label: "b", median: 2, min: 2, max: 2 }] }]);
  checkBalanced(svg);
  assert.ok(!svg.includes("class=\"ratio\""));
  const empty = renderChartSvg([]);
  checkBalanced(empty);
  assert.match(empty, /no figures in this run/);
});

// Re-renders the SVG chart of a bench run from its results JSON (e.g. after
// changing bench/lib/chart.ts, or for a run older than the chart). See
// docs/benchmarks.md.
//
//   node --import tsx bench/chart.ts bench/results/latest.json [out.svg]
//
// Without out.svg the chart goes next to the JSON, with the extension .svg.
import { readFileSync, writeFileSync } from "node:fs";
import { chartFigures, chartSvgFromResults } from "./lib/chart.js";

const [input, output] = process.argv.slice(2);
if (input === undefined || input === "-h" || input === "--help") {
  process.stderr.write("usage: node --import tsx bench/chart.ts RESULTS.json [OUT.svg]\n");
  process.exit(input === undefined ? 2 : 0);
}
let results: unknown;
try {
  results = JSON.parse(readFileSync(input, "utf8"));
} catch (err) {
  process.stderr.write(`bench/chart: ${input}: ${(err as Error).message}\n`);
  process.exit(1);
}
const out = output ?? input.replace(/(\.json)?$/, ".svg");
writeFileSync(out, chartSvgFromResults(results));
process.stdout.write(`chart: ${out} (${chartFigures(results).length} figures)\n`);

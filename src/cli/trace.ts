// `hako trace ID`: where the start of a sandbox (a `hako run` container or a
// CRI pod, by its sandbox id) went, phase by phase, from the timeline the
// runtime records; live sandboxes from their state.json, finished ones from
// <state_dir>/traces/.
import { writeFileSync } from "node:fs";
import { Code } from "../protocols/ttrpc/status.js";
import { RuntimeError } from "../runtime/errors.js";
import { readState, sandboxDir } from "../runtime/state.js";
import { readArchivedTrace, renderTraceSvg, renderTraceText, traceFromState, type SandboxTrace } from "../runtime/trace.js";
import { setup, type GlobalOptions } from "./common.js";

export function loadTrace(stateDir: string, id: string): SandboxTrace {
  const live = readState(sandboxDir(stateDir, id));
  if (live) return traceFromState(live);
  const archived = readArchivedTrace(stateDir, id);
  if (archived) return archived;
  throw new RuntimeError(Code.NOT_FOUND, id, `no trace of sandbox ${id} in ${stateDir}`, {
    hint: "give the sandbox id (a CRI pod's id, or the id given to `hako run`); traces of the last 50 finished sandboxes are kept",
  });
}

export function traceCommand(id: string, opts: GlobalOptions & { json?: boolean; svg?: string }): void {
  const { cfg } = setup(opts);
  const trace = loadTrace(cfg.runtime.state_dir, id);
  if (opts.svg) writeFileSync(opts.svg, renderTraceSvg(trace));
  process.stdout.write(opts.json ? `${JSON.stringify(trace, null, 2)}\n` : renderTraceText(trace));
}

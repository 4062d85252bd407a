// The host's KSM settings while the cri section drives ksmd at its own pace:
// written before the change, removed once they are back. A run killed in
// between (SIGKILL: no finally runs) leaves the file, and the next run puts
// the settings back from it before it reads "the host's settings at start"
// for its leak check, so a killed run does not leave ksmd busy for good.
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { KSM_DIR, readKsmSettings, writeKsmSettings, type KsmSettings } from "../../src/resource/ksm.js";

export const KSM_JOURNAL = "/run/hako-bench-ksm-settings.json";

/** Notes the host's settings, then sets `pace`; returns what to put back. */
export function setKsmPace(pace: KsmSettings, journal = KSM_JOURNAL, dir = KSM_DIR): KsmSettings {
  const before = readKsmSettings(dir);
  writeFileSync(journal, `${JSON.stringify(before)}\n`);
  writeKsmSettings(pace, dir);
  return before;
}

/** Puts the noted settings back and forgets them. */
export function restoreKsm(before: KsmSettings, journal = KSM_JOURNAL, dir = KSM_DIR): void {
  writeKsmSettings(before, dir);
  rmSync(journal, { force: true });
}

/** After an interrupted run: the settings it noted, put back (undefined: nothing to recover). */
export function recoverKsm(journal = KSM_JOURNAL, dir = KSM_DIR): KsmSettings | undefined {
  if (!existsSync(journal)) return undefined;
  const saved = JSON.parse(readFileSync(journal, "utf8")) as KsmSettings;
  restoreKsm(saved, journal, dir);
  return saved;
}

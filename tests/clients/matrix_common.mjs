// Shared by the client-matrix drivers (openai_node_driver.mjs, ai_sdk_driver.mjs): the fake file
// system and tools, and the cell runner. A driver reads {task, cells: [{id, baseUrl, sim, variant}]}
// as JSON on stdin, runs every cell one after the other in this one process, and writes
// {id: report} as JSON on stdout, a report being {toolRuns: [{name, arguments}], outcome, finalText}.
export const FILES = { "/w/a.txt": "alpha", "/w/b.txt": "bravo", "/w/c.txt": "charlie" };
export const MODEL = "kimi-k2-thinking";
export const MAX_TURNS = 6;
export const TURN_TIMEOUT_MS = 20000;
export const PARAMETERS = {
  read: { type: "object", properties: { path: { type: "string" } }, required: ["path"] },
  exec: { type: "object", properties: { command: { type: "string" } }, required: ["command"] },
};
export const DESCRIPTIONS = { read: "Read a file", exec: "Run a shell command" };
export const TOOLS = Object.keys(PARAMETERS).map((name) => ({
  type: "function",
  function: { name, description: DESCRIPTIONS[name], parameters: PARAMETERS[name] },
}));

// What the tool received: the parsed object, or the raw text when it is not JSON.
export function parseArguments(raw) {
  if (typeof raw !== "string") return raw ?? null;
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

export function runTool(name, args) {
  const a = args && typeof args === "object" ? args : {};
  if (name === "read") return a.path in FILES ? FILES[a.path] : `ENOENT: ${JSON.stringify(a.path)}`;
  if (name === "exec") return `ran ${a.command}`;
  return `unknown tool ${name}`;
}

export function newReport() {
  return { toolRuns: [], outcome: "unfinished", finalText: null };
}

export function errorText(err) {
  return `${err?.name ?? "Error"}: ${String(err?.message ?? err)}`.slice(0, 400);
}

async function readStdin() {
  const parts = [];
  for await (const part of process.stdin) parts.push(part);
  return JSON.parse(Buffer.concat(parts).toString("utf8"));
}

// variants: {name: async (cell, task, report) => void}; a thrown error ends the cell as "error: ...".
export async function runCells(variants) {
  const { task, cells } = await readStdin();
  const reports = {};
  for (const cell of cells) {
    const report = newReport();
    try {
      await variants[cell.variant](cell, task, report);
    } catch (err) {
      report.outcome = `error: ${errorText(err)}`;
    }
    reports[cell.id] = report;
  }
  process.stdout.write(JSON.stringify(reports) + "\n");
}

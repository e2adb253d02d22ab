// Drives pi-ai's openai-completions provider (the stream parser inside OpenClaw) through a
// multi-turn tool task and reports, as JSON on stdout, what every tool received and how each
// turn ended. Run from a directory where pi-ai is installed: `@mariozechner/pi-ai` (up to 0.73)
// or its continuation `@earendil-works/pi-ai` (1.x, whose old global API is `/compat`).
//
//   node piai_driver.mjs --base-url http://127.0.0.1:PORT/v1 --task "read /w/a.txt then ..."
//        [--model kimi-k2-thinking] [--sim "shape=vllm,interleave"] [--sanitize none|strict]
//        [--turns 6] [--turn-timeout-ms 20000]
//
// --sanitize strict rewrites the history's tool-call ids before every request the way OpenClaw
// 2026.4.21 does for custom openai-completions providers (alphanumerics only, cut to 40,
// occurrence seeds id:N, hash suffix on collisions), which is what poisons Kimi's history.
import { createHash } from "node:crypto";

async function loadPiai() {
  try {
    return await import("@earendil-works/pi-ai/compat");
  } catch (err) {
    if (err?.code !== "ERR_MODULE_NOT_FOUND") throw err;
    return await import("@mariozechner/pi-ai");
  }
}
const { streamSimple } = await loadPiai();

const args = {};
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a.startsWith("--")) args[a.slice(2)] = process.argv[i + 1] && !process.argv[i + 1].startsWith("--") ? process.argv[++i] : "true";
}
const baseUrl = args["base-url"];
const task = args.task;
const maxTurns = Number(args.turns ?? 6);
const turnTimeoutMs = Number(args["turn-timeout-ms"] ?? 20000);
const sanitizeMode = args.sanitize ?? "none";

const FILES = { "/w/a.txt": "alpha", "/w/b.txt": "bravo", "/w/c.txt": "charlie" };
const model = {
  id: args.model ?? "kimi-k2-thinking",
  name: "kimi",
  api: "openai-completions",
  provider: "sglang",
  baseUrl,
  reasoning: true,
  input: ["text"],
  cost: { input: 0, output: 0, cacheRead: 0, cacheWrite: 0 },
  contextWindow: 131072,
  maxTokens: 8192,
  headers: args.sim ? { "x-kimi-sim": args.sim } : {},
};
// The JSON schema TypeBox's Type.Object({NAME: Type.String()}) produces (1.x no longer exports Type).
const stringParameter = (name) => ({ type: "object", properties: { [name]: { type: "string" } }, required: [name] });
const tools = [
  { name: "read", description: "Read a file", parameters: stringParameter("path") },
  { name: "exec", description: "Run a shell command", parameters: stringParameter("command") },
];

function runTool(call) {
  const a = call.arguments ?? {};
  if (call.name === "read") {
    if (typeof a.path === "string" && a.path in FILES) return { text: FILES[a.path], isError: false };
    return { text: `ENOENT: ${JSON.stringify(a.path)}`, isError: true };
  }
  if (call.name === "exec") {
    if (typeof a.command === "string" && a.command.length) return { text: `ran ${a.command}`, isError: false };
    return { text: "exec needs a command", isError: true };
  }
  return { text: `unknown tool ${call.name}`, isError: true };
}

const hash = (text, n) => createHash("sha256").update(text).digest("hex").slice(0, n);
function strictHistory(messages) {
  const used = new Set();
  const occurrences = new Map();
  const pending = new Map();
  const allocate = (seed) => {
    let base = seed.replace(/[^a-zA-Z0-9]/g, "") || "sanitizedtoolid";
    base = base.slice(0, 40);
    let id = base;
    if (used.has(id)) id = (base.slice(0, 32) + hash(seed, 8)).slice(0, 40);
    used.add(id);
    return id;
  };
  return messages.map((m) => {
    if (m.role === "assistant") {
      return {
        ...m,
        content: m.content.map((block) => {
          if (block.type !== "toolCall") return block;
          const n = (occurrences.get(block.id) ?? 0) + 1;
          occurrences.set(block.id, n);
          const id = allocate(n === 1 ? block.id : `${block.id}:${n}`);
          pending.set(block.id, [...(pending.get(block.id) ?? []), id]);
          return { ...block, id };
        }),
      };
    }
    if (m.role === "toolResult") {
      const queue = pending.get(m.toolCallId);
      return { ...m, toolCallId: queue && queue.length ? queue.shift() : allocate(`${m.toolCallId}:tool_result:1`) };
    }
    return m;
  });
}

const context = {
  systemPrompt: "You are a coding agent.",
  messages: [{ role: "user", content: task, timestamp: Date.now() }],
  tools,
};
const report = { turns: [], toolRuns: [], finalText: null, outcome: "unfinished" };
for (let turn = 1; turn <= maxTurns; turn++) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), turnTimeoutMs);
  const started = Date.now();
  let final = null;
  let thrown = null;
  try {
    const sent = { ...context, messages: sanitizeMode === "strict" ? strictHistory(context.messages) : context.messages };
    const events = await streamSimple(model, sent, { apiKey: "sk-test", reasoning: "medium", signal: abort.signal, maxRetries: 0 });
    for await (const event of events) {
      if (event.type === "done") final = event.message;
      if (event.type === "error") final = event.error;
    }
  } catch (err) {
    thrown = String(err?.message ?? err);
  } finally {
    clearTimeout(timer);
  }
  const calls = (final?.content ?? []).filter((b) => b.type === "toolCall");
  const text = (final?.content ?? []).filter((b) => b.type === "text").map((b) => b.text).join("");
  report.turns.push({
    turn,
    ms: Date.now() - started,
    stopReason: final?.stopReason ?? null,
    error: thrown ?? final?.errorMessage ?? null,
    calls: calls.map((c) => ({ id: c.id, name: c.name, arguments: c.arguments })),
    text,
    thinking: (final?.content ?? []).filter((b) => b.type === "thinking").map((b) => b.thinking),
  });
  if (thrown || !final || final.stopReason === "error" || final.stopReason === "aborted") {
    report.outcome = `error: ${thrown ?? final?.errorMessage ?? final?.stopReason}`;
    break;
  }
  context.messages.push(final);
  if (!calls.length) {
    report.finalText = text;
    report.outcome = final.stopReason === "stop" ? "answered" : `stopped: ${final.stopReason}`;
    break;
  }
  for (const call of calls) {
    const result = runTool(call);
    report.toolRuns.push({ name: call.name, arguments: call.arguments, isError: result.isError });
    context.messages.push({
      role: "toolResult",
      toolCallId: call.id,
      toolName: call.name,
      content: [{ type: "text", text: result.text }],
      isError: result.isError,
      timestamp: Date.now(),
    });
  }
}
process.stdout.write(JSON.stringify(report) + "\n");

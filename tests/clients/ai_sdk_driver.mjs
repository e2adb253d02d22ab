// Client-matrix driver for the Vercel AI SDK: `streamText` with tools (each with `execute`) on an
// `@ai-sdk/openai-compatible` chat model, the SDK running the multi-step tool loop itself
// (`stopWhen: stepCountIs(N)`). Variant: streamText. Protocol: see matrix_common.mjs.
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { jsonSchema, stepCountIs, streamText, tool } from "ai";
import { DESCRIPTIONS, MAX_TURNS, MODEL, PARAMETERS, errorText, runCells, runTool } from "./matrix_common.mjs";

async function streamTextLoop(cell, task, report) {
  const provider = createOpenAICompatible({
    name: "kimi",
    baseURL: cell.baseUrl,
    apiKey: "sk-test",
    headers: { "x-kimi-sim": cell.sim },
  });
  const tools = Object.fromEntries(
    Object.keys(PARAMETERS).map((name) => [
      name,
      tool({
        description: DESCRIPTIONS[name],
        inputSchema: jsonSchema(PARAMETERS[name]),
        execute: async (args) => {
          report.toolRuns.push({ name, arguments: args });
          return runTool(name, args);
        },
      }),
    ]),
  );
  const errors = [];
  const result = streamText({
    model: provider.chatModel(MODEL),
    messages: [{ role: "user", content: task }],
    tools,
    maxRetries: 0,
    stopWhen: stepCountIs(MAX_TURNS),
    onError: ({ error }) => errors.push(errorText(error)),
  });
  for await (const part of result.fullStream) {
    // a call the SDK could not use (unparsable or invalid input) is reported here, not thrown
    if (part.type === "tool-error") errors.push(`tool-error ${part.toolName}: ${errorText(part.error)}`);
    if (part.type === "tool-call" && part.invalid) report.toolRuns.push({ name: part.toolName, arguments: part.input });
  }
  const finishReason = await result.finishReason;
  report.finalText = await result.text;
  if (errors.length) report.outcome = `error: ${errors.join("; ")}`;
  else report.outcome = finishReason === "stop" ? "answered" : `stopped: ${finishReason}`;
}

await runCells({ streamText: streamTextLoop });

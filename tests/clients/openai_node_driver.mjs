// Client-matrix driver for the OpenAI Node SDK (`openai` npm). Variants:
//   guide:    client.chat.completions.create({stream: true}) accumulated the way OpenAI's
//             function-calling guide shows: `if (!final[index]) final[index] = toolCall;` then
//             `final[index].function.arguments += toolCall.function.arguments` for every delta,
//             the first included; our own loop runs the tools.
//   stream:   the SDK's stream helper, client.chat.completions.stream(...).finalChatCompletion().
//   runTools: client.chat.completions.runTools({stream: true}) runs the whole tool loop itself.
// Protocol: see matrix_common.mjs.
import OpenAI from "openai";
import { MAX_TURNS, MODEL, TOOLS, TURN_TIMEOUT_MS, parseArguments, runCells, runTool } from "./matrix_common.mjs";

function client(cell) {
  return new OpenAI({
    baseURL: cell.baseUrl,
    apiKey: "sk-test",
    maxRetries: 0,
    timeout: TURN_TIMEOUT_MS,
    defaultHeaders: { "x-kimi-sim": cell.sim },
  });
}

function toolMessage(call, report) {
  const args = parseArguments(call.function.arguments);
  report.toolRuns.push({ name: call.function.name, arguments: args });
  return { role: "tool", tool_call_id: call.id, content: runTool(call.function.name, args) };
}

// One turn: the assistant message as the loop will send it back, and the turn's finish_reason.
async function guideTurn(openai, messages) {
  const stream = await openai.chat.completions.create({ model: MODEL, messages, tools: TOOLS, stream: true });
  const finalToolCalls = {};
  let content = "";
  let finishReason = null;
  for await (const chunk of stream) {
    const toolCalls = chunk.choices[0].delta.tool_calls || [];
    for (const toolCall of toolCalls) {
      const { index } = toolCall;
      if (!finalToolCalls[index]) {
        finalToolCalls[index] = toolCall;
      }
      finalToolCalls[index].function.arguments += toolCall.function.arguments;
    }
    content += chunk.choices[0].delta.content ?? "";
    finishReason = chunk.choices[0].finish_reason ?? finishReason;
  }
  const calls = Object.values(finalToolCalls).map((c) => ({
    id: c.id,
    type: "function",
    function: { name: c.function.name, arguments: c.function.arguments },
  }));
  return { message: { role: "assistant", content, ...(calls.length ? { tool_calls: calls } : {}) }, finishReason };
}

async function helperTurn(openai, messages) {
  const completion = await openai.chat.completions
    .stream({ model: MODEL, messages, tools: TOOLS })
    .finalChatCompletion();
  const choice = completion.choices[0];
  const calls = (choice.message.tool_calls ?? []).map((c) => ({
    id: c.id,
    type: "function",
    function: { name: c.function.name, arguments: c.function.arguments },
  }));
  const message = { role: "assistant", content: choice.message.content, ...(calls.length ? { tool_calls: calls } : {}) };
  return { message, finishReason: choice.finish_reason };
}

function ownLoop(turn) {
  return async (cell, task, report) => {
    const openai = client(cell);
    const messages = [{ role: "user", content: task }];
    for (let i = 0; i < MAX_TURNS; i++) {
      const { message, finishReason } = await turn(openai, messages);
      messages.push(message);
      if (!message.tool_calls) {
        report.finalText = message.content;
        report.outcome = finishReason === "stop" ? "answered" : `stopped: ${finishReason}`;
        return;
      }
      for (const call of message.tool_calls) messages.push(toolMessage(call, report));
    }
  };
}

async function runTools(cell, task, report) {
  const tools = TOOLS.map(({ function: f }) => ({
    type: "function",
    function: {
      ...f,
      parse: (raw) => {
        try {
          return JSON.parse(raw);
        } catch (err) {
          report.toolRuns.push({ name: f.name, arguments: raw });
          throw err;
        }
      },
      function: (args) => {
        report.toolRuns.push({ name: f.name, arguments: args });
        return runTool(f.name, args);
      },
    },
  }));
  const runner = client(cell).chat.completions.runTools({
    model: MODEL,
    messages: [{ role: "user", content: task }],
    tools,
    stream: true,
    maxChatCompletions: MAX_TURNS,
  });
  const completion = await runner.finalChatCompletion();
  const choice = completion.choices[0];
  report.finalText = choice.message.content;
  report.outcome = choice.finish_reason === "stop" && !choice.message.tool_calls?.length ? "answered" : `stopped: ${choice.finish_reason}`;
}

await runCells({ guide: ownLoop(guideTurn), stream: ownLoop(helperTurn), runTools });

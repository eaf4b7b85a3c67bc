// The official MCP SDK client (@modelcontextprotocol/sdk), streamable HTTP, run under
// `tokenrelay run`: it finds the MCP server at $TOKENRELAY_URL_TOOLS and sends the local key
// ($TOKENRELAY_LOCAL_KEY) as its static bearer header, as Copilot CLI, Claude Code and Codex
// do. Two sessions (SSE answers at /mcp, JSON answers at /mcp-json), each CALLS tool calls
// SPACING ms apart; at call REVOKE_AT of the first session the server revokes every token.
// Counts the logging notifications that arrive on each session's GET stream, then ends each
// session with DELETE. Prints one JSON line.
//
// Env: TOKENRELAY_URL_TOOLS, TOKENRELAY_LOCAL_KEY, E2E_MCP_UPSTREAM, E2E_CALLS, E2E_SPACING_MS, E2E_REVOKE_AT
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { LoggingMessageNotificationSchema } from "@modelcontextprotocol/sdk/types.js";

const base = process.env.TOKENRELAY_URL_TOOLS;
const key = process.env.TOKENRELAY_LOCAL_KEY;
const calls = Number(process.env.E2E_CALLS || 6);
const spacing = Number(process.env.E2E_SPACING_MS || 1500);
const revokeAt = Number(process.env.E2E_REVOKE_AT || 2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function session(path, revoke) {
    const transport = new StreamableHTTPClientTransport(new URL(base + path), {
        requestInit: { headers: { Authorization: `Bearer ${key}` } },
    });
    const client = new Client({ name: "tokenrelay-e2e", version: "1.0.0" });
    let ticks = 0;
    client.setNotificationHandler(LoggingMessageNotificationSchema, () => {
        ticks++;
    });
    let transportErrors = 0;
    await client.connect(transport);
    transport.onerror = () => transportErrors++;
    const sessionId = transport.sessionId;
    const ticksAt = [];
    const answers = [];
    for (let i = 0; i < calls; i++) {
        if (revoke && i === revokeAt) {
            await fetch(`${process.env.E2E_MCP_UPSTREAM}/__revoke-next`);
        }
        const r = await client.callTool({ name: "echo", arguments: { text: `${path} call ${i}` } });
        const text = r.content?.[0]?.text;
        if (text !== `echo: ${path} call ${i}`) throw new Error(`call ${i}: unexpected answer ${JSON.stringify(r)}`);
        answers.push(text);
        ticksAt.push(ticks);
        if (i + 1 < calls) await sleep(spacing);
    }
    await transport.terminateSession();
    await client.close();
    return { path, sessionId, answers: answers.length, ticksAt, transportErrors };
}

const out = [];
out.push(await session("/mcp", true));
out.push(await session("/mcp-json", false));
console.log(JSON.stringify({ sessions: out }));

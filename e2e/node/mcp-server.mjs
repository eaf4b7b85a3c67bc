// A remote MCP server on the official SDK (@modelcontextprotocol/sdk, pinned in e2e/lib.sh),
// streamable HTTP, that demands a bearer token which rotates every LIFETIME seconds: it issues
// tokens itself (GET /__token), can revoke them (GET /__revoke, or GET /__revoke-next: when the
// next MCP request arrives), and answers 401 to any MCP
// request (POST, GET, DELETE) without a valid one, as an OAuth-protected MCP server does.
// /mcp answers POSTs with SSE, /mcp-json with JSON (`enableJsonResponse`). Every session gets
// a logging notification every 300 ms on its GET stream, so a client can tell that the stream
// stayed open.
//
// Usage: node mcp-server.mjs LIFETIME_S   (prints {"url": "http://127.0.0.1:PORT"})
import http from "node:http";
import { randomUUID } from "node:crypto";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { z } from "zod";

const LIFETIME = Number(process.argv[2] || 3);
const tokens = new Map(); // token -> expiry (ms)
const revoked = new Set();
let issued = 0;
let revokeNext = false;
const stats = { post: 0, get: 0, delete: 0, rejected: 0, rejected_methods: [], tool_calls: 0, ticks_sent: 0, sessions: 0, sessions_closed: 0, get_stream_ms: [] };
const transports = new Map();

function valid(req) {
    const a = req.headers.authorization || "";
    const t = a.startsWith("Bearer ") ? a.slice(7) : "";
    const exp = tokens.get(t);
    return exp !== undefined && !revoked.has(t) && Date.now() < exp;
}

function json(res, status, obj, headers = {}) {
    res.writeHead(status, { "content-type": "application/json", ...headers });
    res.end(JSON.stringify(obj));
}

async function newSession(jsonMode) {
    const mcp = new McpServer({ name: "e2e-rotating-auth", version: "1.0.0" }, { capabilities: { logging: {} } });
    mcp.registerTool("echo", { description: "Echoes its text", inputSchema: { text: z.string() } }, async ({ text }) => {
        stats.tool_calls++;
        return { content: [{ type: "text", text: `echo: ${text}` }] };
    });
    let ticker;
    const transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        enableJsonResponse: jsonMode,
        onsessioninitialized: (id) => {
            transports.set(id, transport);
            stats.sessions++;
            let n = 0;
            ticker = setInterval(() => {
                mcp.server.sendLoggingMessage({ level: "info", data: `tick ${n++}` }).then(() => stats.ticks_sent++, () => {});
            }, 300);
        },
    });
    transport.onclose = () => {
        clearInterval(ticker);
        if (transport.sessionId) transports.delete(transport.sessionId);
        stats.sessions_closed++;
    };
    await mcp.connect(transport);
    return transport;
}

const server = http.createServer(async (req, res) => {
    try {
        const url = new URL(req.url, "http://127.0.0.1");
        if (url.pathname === "/__token") {
            const t = `mcp-tok-${++issued}`;
            tokens.set(t, Date.now() + LIFETIME * 1000);
            return json(res, 200, { access_token: t, expires_in: LIFETIME });
        }
        if (url.pathname === "/__revoke") {
            for (const t of tokens.keys()) revoked.add(t);
            return json(res, 200, { revoked: revoked.size });
        }
        if (url.pathname === "/__revoke-next") {
            revokeNext = true;
            return json(res, 200, { armed: true });
        }
        if (url.pathname === "/__stats") return json(res, 200, stats);
        if (url.pathname !== "/mcp" && url.pathname !== "/mcp-json") return json(res, 404, { error: "not found" });
        if (revokeNext) {
            // As if the identity provider revoked every token just before this request.
            revokeNext = false;
            for (const t of tokens.keys()) revoked.add(t);
        }
        if (!valid(req)) {
            stats.rejected++;
            stats.rejected_methods.push(req.method);
            req.resume();
            return json(res, 401, { jsonrpc: "2.0", error: { code: -32001, message: "invalid or expired token" }, id: null }, { "www-authenticate": 'Bearer error="invalid_token"' });
        }
        const method = req.method.toLowerCase();
        if (method in stats) stats[method]++;
        const sid = req.headers["mcp-session-id"];
        let transport = sid ? transports.get(sid) : undefined;
        if (!transport) {
            if (sid || req.method !== "POST") return json(res, 404, { jsonrpc: "2.0", error: { code: -32001, message: "unknown session" }, id: null });
            transport = await newSession(url.pathname === "/mcp-json");
        }
        if (req.method === "GET") {
            const opened = Date.now();
            res.on("close", () => stats.get_stream_ms.push(Date.now() - opened));
        }
        await transport.handleRequest(req, res);
    } catch (e) {
        if (!res.headersSent) json(res, 500, { error: String(e) });
    }
});
server.listen(0, "127.0.0.1", () => {
    console.log(JSON.stringify({ url: `http://127.0.0.1:${server.address().port}` }));
});
setTimeout(() => process.exit(0), 600_000).unref(); // bounded: the test stops it long before

/**
 * The limits of the HTTP server under `createHttpApp`: what a slow, stalled, oversized or
 * malformed client meets before a route sees it. Node's defaults are made for trusted
 * clients: a body may stall for five minutes, a 1,000-header request gets a bare 400, a body
 * sent after `Expect: 100-continue` is invited before its size is looked at, and connections
 * are accepted until the process runs out of file descriptors. Here each limit answers with a
 * status and a JSON body `{ "error": ... }` that names the limit, and the server goes on.
 */
import * as fs from 'fs';
import * as http from 'http';
import type { Socket } from 'net';

/** The limits, all settable from `createHttpApp`'s options and `torch-early-exit serve`. */
export interface HttpLimits {
  /** The largest body accepted, in bytes (default 16 MiB); larger: 413, before `100 Continue`. */
  bodyLimit: number;
  /** The whole request (headers and body) must arrive within this (ms, default 30000); else 408. */
  requestTimeoutMs: number;
  /** Its headers must arrive within this (ms, default 10000); else 408. */
  headersTimeoutMs: number;
  /** An idle kept-alive connection is closed after this (ms, default 5000). */
  keepAliveTimeoutMs: number;
  /**
   * Connections open at once (default: 512, or less where the process may open few files, see
   * `defaultMaxConnections`); a request on one beyond is answered 503 and its connection closed.
   */
  maxConnections: number;
}

/**
 * 512 connections, or fewer when the soft limit on open files (`ulimit -n`) is low: each
 * connection is a file descriptor, and those beyond the cap still take one until their
 * request is answered 503, up to a listen backlog (511) of them at once. Past the limit
 * Node can only accept and drop (ECONNRESET, no status), so the cap leaves room for a full
 * backlog and 128 descriptors of the process's own: (limit - 128 - 511), at least 16.
 */
export function defaultMaxConnections(): number {
  let soft = Infinity;
  try {
    const line = /^Max open files\s+(\d+|unlimited)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
    if (line && line[1] !== 'unlimited') soft = Number(line[1]);
  } catch {
    // Not Linux: the cap stays at 512.
  }
  return Math.max(16, Math.min(512, soft - 128 - 511));
}

export const DEFAULT_LIMITS: HttpLimits = {
  bodyLimit: 16 * 2 ** 20, requestTimeoutMs: 30000, headersTimeoutMs: 10000, keepAliveTimeoutMs: 5000, maxConnections: defaultMaxConnections(),
};

/** Set on a socket accepted beyond `maxConnections`: its request is refused. */
export const OVER_CAPACITY = Symbol('over capacity');

/** An HTTP/1.1 response written straight to a socket, for errors before a request object exists. */
function rawResponse(status: number, error: string): string {
  const body = JSON.stringify({ error });
  return `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nConnection: close\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
}

/** Answers what Node's parser refused (fastify's `clientErrorHandler`): 408, 431 or 400, naming the limit or the fault. */
export function clientErrorHandler(limits: HttpLimits): (error: Error & { code?: string }, socket: Socket) => void {
  return (error, socket) => {
    if (error.code === 'ECONNRESET' || socket.destroyed) return;
    let status = 400;
    let message = `the request is malformed: ${error.message}`;
    if (error.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
      status = 408;
      message = `the request did not arrive whole within ${limits.requestTimeoutMs} ms (requestTimeoutMs), or its headers within ${limits.headersTimeoutMs} ms (headersTimeoutMs)`;
    } else if (error.code === 'HPE_HEADER_OVERFLOW') {
      status = 431;
      message = `the request's headers are larger than ${http.maxHeaderSize} bytes, the most this server reads`;
    }
    // A response already begun on this socket cannot be followed by another.
    const pending = (socket as Socket & { _httpMessage?: http.ServerResponse })._httpMessage;
    if (socket.writable && !pending?.headersSent) socket.end(rawResponse(status, message));
    socket.destroy();
  };
}

/**
 * Makes the Node server (fastify's `serverFactory`): timeouts checked every second, no count
 * limit on headers (their size is limited, 16 KiB, answered 431), connections counted against
 * `maxConnections`, and `Expect: 100-continue` answered 413 when the announced body is too large.
 */
export function limitedServerFactory(limits: HttpLimits): (handler: http.RequestListener) => http.Server {
  return (handler) => {
    const server = http.createServer({
      requestTimeout: limits.requestTimeoutMs, headersTimeout: limits.headersTimeoutMs, keepAliveTimeout: limits.keepAliveTimeoutMs,
      connectionsCheckingInterval: Math.min(1000, limits.headersTimeoutMs),
    }, handler);
    // Node's default of 2,000 raw header lines answers 1,000 headers with a bare 400; their size is the limit that matters.
    server.maxHeadersCount = 0;
    let open = 0;
    server.on('connection', (socket: Socket & { [OVER_CAPACITY]?: boolean }) => {
      open++;
      if (open > limits.maxConnections) socket[OVER_CAPACITY] = true;
      socket.once('close', () => { open--; });
    });
    server.on('checkContinue', (request: http.IncomingMessage, response: http.ServerResponse) => {
      const length = Number(request.headers['content-length']);
      if (Number.isFinite(length) && length > limits.bodyLimit) {
        const body = JSON.stringify({ error: `the body has ${length} bytes, more than ${limits.bodyLimit}, the most this server takes (bodyLimit)` });
        response.writeHead(413, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), connection: 'close' });
        response.end(body);
        return;
      }
      response.writeContinue();
      server.emit('request', request, response);
    });
    return server;
  };
}

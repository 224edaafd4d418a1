/**
 * Why a request to an `EarlyExitServer` was refused, each with a `code` a caller (and the
 * HTTP layer) can switch on.
 */

/** The queue is full (`maxQueueSize`): the request is refused at once; HTTP 503. */
export class ServerOverloadedError extends Error {
  readonly code = 'OVERLOADED';
  constructor(queued: number, maxQueueSize: number) {
    super(`the server is overloaded: ${queued} requests are queued, the most it holds (maxQueueSize ${maxQueueSize}); try again later`);
    this.name = 'ServerOverloadedError';
  }
}

/** The request waited in the queue longer than its timeout before a batch took it; HTTP 503. */
export class RequestTimeoutError extends Error {
  readonly code = 'TIMEOUT';
  constructor(timeoutMs: number) {
    super(`the request waited ${timeoutMs} ms in the queue (timeoutMs) without a batch taking it`);
    this.name = 'RequestTimeoutError';
  }
}

/** The server was closed: requests still queued, and new ones, are refused; HTTP 503. */
export class ServerClosedError extends Error {
  readonly code = 'CLOSED';
  constructor(what: string) {
    super(`the server is closed: ${what}`);
    this.name = 'ServerClosedError';
  }
}

/** The request itself is wrong (its shape, dtype or size); HTTP 400. */
export class BadRequestError extends Error {
  readonly code = 'BAD_REQUEST';
  constructor(message: string) {
    super(message);
    this.name = 'BadRequestError';
  }
}

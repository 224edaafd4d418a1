/** Serving early exits under load: the batcher, the server, and its HTTP face. */
import type { FastifyInstance } from 'fastify';
import type { HttpOptions } from './http';
import type { EarlyExitServer } from './server';

export { DynamicBatcher, systemClock } from './batcher';
export type { BatcherOptions, BatcherStats, BatchRunner, Clock, Pending } from './batcher';
export { EarlyExitServer } from './server';
export type { InferResult, ServerOptions, ServerStats } from './server';
export { BadRequestError, RequestTimeoutError, ServerClosedError, ServerOverloadedError } from './errors';
export type { HttpOptions } from './http';
export type { HttpLimits } from './http-limits';

/**
 * The HTTP app over `server` (see `lib/serving/http.ts` for the routes); fastify is loaded
 * on the first call, so that programs that never serve over HTTP do not pay for it.
 */
export function createHttpApp(server: EarlyExitServer, options: HttpOptions = {}): FastifyInstance {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  return (require('./http') as typeof import('./http')).createHttpApp(server, options);
}

// Engine entry point: call `initEngine` once at start-up, then use `@tensorflow/tfjs` as usual.
export { BACKEND_ENV, BACKENDS, engineInfo, initEngine } from "./backend.ts";
export type { BackendName, EngineInfo, EngineOptions } from "./backend.ts";

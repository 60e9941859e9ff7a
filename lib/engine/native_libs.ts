// The native libraries behind the wasm engine's fast kernels (OpenBLAS, oneDNN) without a manual
// step: where the system lacks them, `apt-get download` their Debian packages (no root needed)
// and `dpkg-deb -x` them into a per-user cache, once; later runs reuse the cache after checking
// its manifest's sha256 sums. Nothing here throws or hangs: every subprocess has a timeout, an
// entry is renamed into place only when complete and verified, and any failure prints one hint
// line and leaves the run on the kernels that need no library.
//
// Cache layout ($XDG_CACHE_HOME, else ~/.cache):
//   diffusion-pretraining/native/<debian arch>/<package>_<version>/
//     usr/lib/...          the package's files, plus those of any dependency the system lacked
//     manifest.json        { format, packages, lib, preload, sha256 } (see `Manifest`)
import {
  BLAS_ENV,
  ffiGranted,
  OPENBLAS_CANDIDATES,
  OPENBLAS_ENV,
  processEnv,
} from "./blas/openblas.ts";
import {
  ONEDNN_CANDIDATES,
  ONEDNN_ENV,
  ONEDNN_LIB_ENV,
  openMpWaiting,
} from "./blas/onednn_core.ts";

/** Environment variable: `off` (or `0`) uses only libraries installed on the system. */
export const NATIVE_ENV = "DP_NATIVE";

// Timeouts (ms): a download is a few MB (13.7 MB for both packages); the rest is local.
const DOWNLOAD_MS = 120_000;
const LOCAL_MS = 60_000;
// Bound on the dependency closure fetched for one library (libdnnl2 needs 1–2 at most).
const MAX_PACKAGES = 12;
// A temp dir this old was left by a process that died mid-fetch.
const STALE_MS = 3_600_000;

// ---------------------------------------------------------------------------------------------
// The libraries

/** A library the engine can load. */
export type NativeLib = "openblas" | "onednn";

/** Where a library comes from and how its loader is pointed at it. */
export interface NativeLibSpec {
  /** Name in messages. */
  readonly label: string;
  /** Debian package that ships it. */
  readonly pkg: string;
  /** The file the loader opens. */
  readonly soname: string;
  /** The loader's override variable: a path there counts as present and is never fetched. */
  readonly env: string;
  /** Absolute paths where an installed copy lives; any that exists means no fetch. */
  readonly system: readonly string[];
}

const TRIPLET = `${Deno.build.arch}-linux-gnu`;
const DEB_ARCH: Record<string, string> = { x86_64: "amd64", aarch64: "arm64" };

// The loaders' absolute candidates, and their bare sonames in the dirs the dynamic loader searches.
function systemPaths(candidates: readonly string[], env: Env): string[] {
  const dirs = [
    ...(env("LD_LIBRARY_PATH") ?? "").split(":").filter((d) => d.startsWith("/")),
    `/usr/lib/${TRIPLET}`,
    `/lib/${TRIPLET}`,
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
  ];
  return candidates.flatMap((c) => c.startsWith("/") ? [c] : dirs.map((d) => `${d}/${c}`));
}

/** The two libraries as this machine has them (system paths include LD_LIBRARY_PATH). */
export function nativeLibSpecs(env: Env = processEnv): Record<NativeLib, NativeLibSpec> {
  return {
    openblas: {
      label: "OpenBLAS",
      pkg: "libopenblas0-pthread",
      soname: "libopenblas.so.0",
      env: OPENBLAS_ENV,
      system: systemPaths(OPENBLAS_CANDIDATES, env),
    },
    onednn: {
      label: "oneDNN",
      pkg: "libdnnl2",
      soname: "libdnnl.so.2",
      env: ONEDNN_LIB_ENV,
      system: systemPaths(ONEDNN_CANDIDATES, env),
    },
  };
}

type Env = (name: string) => string | undefined;

function granted(desc: Deno.PermissionDescriptor): boolean {
  try {
    return Deno.permissions.querySync(desc).state === "granted"; // query: never prompts
  } catch {
    return false;
  }
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile; // follows symlinks: a dangling one does not count
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// Subprocesses

/** What a command did; codes as in the shell: 124 timed out, 126 not permitted, 127 absent. */
export interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `cmd args` in `cwd`, killed after `timeoutMs`; never throws. */
export type Runner = (
  cmd: string,
  args: readonly string[],
  opts: { readonly cwd?: string; readonly timeoutMs: number },
) => Promise<RunResult>;

// Whether `cmd` is on PATH. Deno cannot resolve an --allow-run name that is not, so there the
// permission reads as not granted: this tells "not installed" from "not permitted".
function onPath(cmd: string): boolean {
  const dirs = (granted({ name: "env", variable: "PATH" }) ? Deno.env.get("PATH") ?? "" : "")
    .split(":").filter((d) => d.startsWith("/"));
  return dirs.some((d) => granted({ name: "read", path: `${d}/${cmd}` }) && exists(`${d}/${cmd}`));
}

/** The real runner: Deno.Command, only where --allow-run grants `cmd` (so it never prompts). */
export const runCommand: Runner = async (cmd, args, { cwd, timeoutMs }) => {
  if (!granted({ name: "run", command: cmd })) {
    return onPath(cmd)
      ? { code: 126, stdout: "", stderr: `no --allow-run permission for ${cmd}` }
      : { code: 127, stdout: "", stderr: `${cmd} not found` };
  }
  const signal = AbortSignal.timeout(timeoutMs);
  const timedOut = {
    code: 124,
    stdout: "",
    stderr: `${cmd} timed out after ${timeoutMs / 1000} s`,
  };
  try {
    const out = await new Deno.Command(cmd, {
      args: [...args],
      cwd,
      env: { LC_ALL: "C" }, // untranslated messages for the hint line
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      signal,
    }).output();
    if (signal.aborted) return timedOut;
    const text = new TextDecoder();
    return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
  } catch (e) {
    if (signal.aborted) return timedOut;
    const absent = e instanceof Deno.errors.NotFound;
    return { code: absent ? 127 : 126, stdout: "", stderr: absent ? `${cmd} not found` : `${e}` };
  }
};

/** A fetch that did not complete; `timedOut` when a command ran out of time. */
class FetchError extends Error {
  constructor(message: string, readonly timedOut = false) {
    super(message);
  }
}

async function must(run: Runner, cmd: string, args: string[], cwd?: string): Promise<string> {
  const r = await run(cmd, args, { cwd, timeoutMs: cmd === "apt-get" ? DOWNLOAD_MS : LOCAL_MS });
  if (r.code === 0) return r.stdout;
  const why = r.stderr.split("\n").map((l) => l.trim()).find((l) => l !== "" && !/^[WN]:/.test(l));
  throw new FetchError(`${cmd} ${args[0]}: ${why ?? `exit ${r.code}`}`, r.code === 124);
}

// ---------------------------------------------------------------------------------------------
// Debian metadata

/** `Depends:` as alternatives groups, names only: "a (>= 1), b | c" → [["a"], ["b", "c"]]. */
export function parseDepends(field: string): string[][] {
  return field.split(",").map((group) =>
    group.split("|").map((alt) => alt.trim().split(/[\s(:]/)[0]).filter((n) => n !== "")
  ).filter((g) => g.length > 0);
}

/** Control fields of a .deb (`dpkg-deb -f`); a folded field's lines continue with a space. */
async function debFields(run: Runner, deb: string): Promise<Record<string, string>> {
  const out = await must(run, "dpkg-deb", ["-f", deb, "Package", "Version", "Depends"]);
  const fields: Record<string, string> = {};
  for (const line of out.replace(/\n[ \t]+/g, " ").split("\n")) {
    const m = line.match(/^([\w-]+):\s*(.*)$/);
    if (m) fields[m[1]] = m[2];
  }
  return fields;
}

/** Which of `names` dpkg has installed (`dpkg -s` stanzas; it exits 1 when some are not). */
async function installedOf(run: Runner, names: string[]): Promise<Set<string>> {
  const r = await run("dpkg", ["-s", ...names], { timeoutMs: LOCAL_MS });
  if (r.code >= 124) throw new FetchError(`dpkg -s: ${r.stderr.trim()}`);
  const out = new Set<string>();
  for (const stanza of r.stdout.split(/\n\s*\n/)) {
    const name = stanza.match(/^Package:\s*(\S+)/m)?.[1];
    if (name && /^Status:.* installed\s*$/m.test(stanza)) out.add(name);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Cache entries

/** `manifest.json` of a cache entry; paths are relative to the entry. */
export interface Manifest {
  readonly format: 1;
  /** The library's package first, then the dependencies fetched with it. */
  readonly packages: readonly { readonly name: string; readonly version: string }[];
  /** The soname to dlopen (often a symlink to a file in `sha256`). */
  readonly lib: string;
  /** The dependencies' shared objects, to dlopen first, leaves first. */
  readonly preload: readonly string[];
  /** sha256 (hex) of every shared object (regular file) in the entry. */
  readonly sha256: Readonly<Record<string, string>>;
}

const MANIFEST = "manifest.json";
const SHARED_OBJECT = /\.so(\.\d+)*$/;

/** sha256 of `data`, as hex. */
export async function sha256Hex(data: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", data);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

const sha256 = async (path: string) => sha256Hex(await Deno.readFile(path));

/** Relative paths of the shared objects under `dir`, files and symlinks, sorted. */
async function sharedObjects(
  dir: string,
  under = "",
): Promise<{ files: string[]; links: string[] }> {
  const out = { files: [] as string[], links: [] as string[] };
  for await (const e of Deno.readDir(`${dir}/${under}`)) {
    const rel = under ? `${under}/${e.name}` : e.name;
    if (e.isDirectory) {
      const sub = await sharedObjects(dir, rel);
      out.files.push(...sub.files);
      out.links.push(...sub.links);
    } else if (SHARED_OBJECT.test(e.name)) (e.isSymlink ? out.links : out.files).push(rel);
  }
  out.files.sort();
  out.links.sort();
  return out;
}

/** A verified entry: absolute paths to dlopen. */
interface Entry {
  readonly lib: string;
  readonly preload: readonly string[];
}

const entryOf = (dir: string, m: Manifest): Entry => ({
  lib: `${dir}/${m.lib}`,
  preload: m.preload.map((rel) => `${dir}/${rel}`),
});

/** The manifest at `dir` when it is whole and every sha256 matches, else undefined. */
async function verify(dir: string, pkg: string): Promise<Manifest | undefined> {
  try {
    const m = JSON.parse(await Deno.readTextFile(`${dir}/${MANIFEST}`)) as Manifest;
    if (m.format !== 1 || m.packages?.[0]?.name !== pkg || typeof m.lib !== "string") return;
    for (const [rel, hash] of Object.entries(m.sha256)) {
      if (!(await Deno.lstat(`${dir}/${rel}`)).isFile || await sha256(`${dir}/${rel}`) !== hash) {
        return;
      }
    }
    // The lib and preloads must land on hashed files inside the entry (no link leads out).
    const real = await Deno.realPath(dir);
    for (const rel of [m.lib, ...m.preload]) {
      const target = await Deno.realPath(`${dir}/${rel}`);
      if (!target.startsWith(`${real}/`) || !(target.slice(real.length + 1) in m.sha256)) return;
    }
    return m;
  } catch {
    return undefined; // no manifest (partial entry), unreadable, or a file gone
  }
}

/** A valid cached entry of `pkg` in `archDir`; invalid ones (corrupt, partial) are removed. */
async function cached(archDir: string, pkg: string): Promise<Entry | undefined> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(archDir)) {
      if (e.isDirectory && e.name.startsWith(`${pkg}_`)) names.push(e.name);
    }
  } catch {
    return undefined; // no cache yet
  }
  for (const name of names.sort().reverse()) {
    const m = await verify(`${archDir}/${name}`, pkg);
    if (m) return entryOf(`${archDir}/${name}`, m);
    await Deno.remove(`${archDir}/${name}`, { recursive: true }).catch(() => {});
  }
  return undefined;
}

async function removeStale(archDir: string): Promise<void> {
  for await (const e of Deno.readDir(archDir)) {
    if (!e.name.startsWith(".tmp-")) continue;
    const mtime = (await Deno.lstat(`${archDir}/${e.name}`).catch(() => undefined))?.mtime;
    if (mtime && Date.now() - mtime.getTime() > STALE_MS) {
      await Deno.remove(`${archDir}/${e.name}`, { recursive: true }).catch(() => {});
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Fetching one entry

// `apt-get download` the first alternative that downloads; its .deb path and package name.
async function download(run: Runner, alts: string[], debs: string) {
  let first: unknown;
  for (const name of alts) {
    try {
      await must(run, "apt-get", ["download", name], debs);
      for await (const e of Deno.readDir(debs)) {
        if (e.name.startsWith(`${name}_`) && e.name.endsWith(".deb")) {
          return { name, deb: `${debs}/${e.name}` };
        }
      }
      throw new FetchError(`apt-get download: no ${name}_*.deb written`);
    } catch (e) {
      first ??= e;
    }
  }
  throw first;
}

/**
 * Download `spec.pkg` and those of its dependencies dpkg has not installed, extract them into a
 * temp dir in `archDir`, write and verify the manifest, then rename the tree into place.
 */
async function fetchEntry(run: Runner, archDir: string, spec: NativeLibSpec): Promise<Entry> {
  const tmp = await Deno.makeTempDir({ dir: archDir, prefix: `.tmp-${spec.pkg}-` });
  try {
    const debs = `${tmp}/debs`, tree = `${tmp}/tree`;
    await Deno.mkdir(debs);
    await Deno.mkdir(tree);
    const fetched: { name: string; version: string; deb: string }[] = [];
    const queue = [[spec.pkg]], seen = new Set([spec.pkg]);
    while (queue.length > 0) {
      if (fetched.length === MAX_PACKAGES) throw new FetchError(`over ${MAX_PACKAGES} packages`);
      const { name, deb } = await download(run, queue.shift()!, debs);
      const f = await debFields(run, deb);
      if (!f.Version) throw new FetchError(`dpkg-deb -f: no Version in ${deb}`);
      fetched.push({ name, version: f.Version, deb });
      const groups = parseDepends(f.Depends ?? "").filter((g) => !g.some((n) => seen.has(n)));
      const have = groups.length > 0 ? await installedOf(run, groups.flat()) : new Set<string>();
      for (const g of groups) {
        if (g.some((n) => have.has(n) || seen.has(n))) continue; // installed, or queued already
        g.forEach((n) => seen.add(n));
        queue.push(g);
      }
    }
    // Extract one package at a time: the shared objects new after each belong to it.
    const owned: string[][] = [];
    let before = new Set<string>();
    for (const f of fetched) {
      await must(run, "dpkg-deb", ["-x", f.deb, tree]);
      const now = (await sharedObjects(tree)).files;
      owned.push(now.filter((rel) => !before.has(rel)));
      before = new Set(now);
    }
    const all = await sharedObjects(tree);
    const lib = [...all.links, ...all.files].find((rel) => rel.endsWith(`/${spec.soname}`));
    if (!lib) throw new FetchError(`${spec.pkg} has no ${spec.soname}`);
    const hashes: Record<string, string> = {};
    for (const rel of all.files) hashes[rel] = await sha256(`${tree}/${rel}`);
    const manifest: Manifest = {
      format: 1,
      packages: fetched.map(({ name, version }) => ({ name, version })),
      lib,
      preload: owned.slice(1).reverse().flat(),
      sha256: hashes,
    };
    await Deno.writeTextFile(`${tree}/${MANIFEST}`, JSON.stringify(manifest, null, 2) + "\n");
    if (!(await verify(tree, spec.pkg))) throw new FetchError(`${spec.pkg} did not verify`);
    // Debian escapes an epoch's colon the same way in .deb names.
    const dest = `${archDir}/${spec.pkg}_${fetched[0].version.replaceAll(":", "%3a")}`;
    try {
      await Deno.rename(tree, dest); // atomic: the entry appears complete or not at all
    } catch {
      // Another process got there first: keep its entry when valid, else replace it.
      const theirs = await verify(dest, spec.pkg);
      if (theirs) return entryOf(dest, theirs);
      await Deno.remove(dest, { recursive: true }).catch(() => {});
      await Deno.rename(tree, dest);
    }
    return entryOf(dest, manifest);
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// Public API

/** A library to dlopen. */
export interface NativeLibPath {
  /** Absolute path of the shared object. */
  readonly path: string;
  /** `system`: installed (or named by the loader's variable); `cache`: fetched, now or earlier. */
  readonly from: "system" | "cache";
  /** Dependencies from the same cache entry, to dlopen first by absolute path (leaves first). */
  readonly preload: readonly string[];
}

/** The libraries found or fetched, by name; a missing key is one the run goes without. */
export type NativeLibs = Partial<Record<NativeLib, NativeLibPath>>;

/** Options for `ensureNativeLibs`; tests replace all of them. */
export interface NativeLibsOptions {
  /** Runs apt-get, dpkg-deb, dpkg. @default runCommand */
  readonly run?: Runner;
  /** Cache root. @default $XDG_CACHE_HOME (else ~/.cache) + /diffusion-pretraining/native */
  readonly cacheDir?: string;
  /** Reads configuration (DP_NATIVE, HOME, XDG_CACHE_HOME, the loaders' variables). */
  readonly env?: Env;
  /** Where the one-line messages go. @default console.error */
  readonly log?: (line: string) => void;
  /** The libraries' specs. @default nativeLibSpecs(env) */
  readonly specs?: Readonly<Record<NativeLib, NativeLibSpec>>;
}

/** `$XDG_CACHE_HOME/diffusion-pretraining/native`, else in `~/.cache`; undefined without HOME. */
export function nativeCacheRoot(env: Env = processEnv): string | undefined {
  const xdg = env("XDG_CACHE_HOME"), home = env("HOME");
  const base = xdg?.startsWith("/") ? xdg : home?.startsWith("/") ? `${home}/.cache` : undefined;
  return base && `${base}/diffusion-pretraining/native`;
}

function hint(specs: NativeLibSpec[], reason: string, debian: boolean): string {
  const what = debian
    ? `\`apt-get install ${specs.map((s) => s.pkg).join(" ")}\``
    : `install ${specs.map((s) => `${s.label} (${s.soname})`).join(" and ")}`;
  return `engine: no ${specs.map((s) => s.label).join(" or ")} (${reason}); ${what} for several ` +
    `times faster training; continuing on wasm without ${specs.length > 1 ? "them" : "it"}`;
}

// apt-get, dpkg-deb and dpkg answer `--version` (cheap, local); a reason when one cannot run.
async function toolsMissing(run: Runner): Promise<{ why: string; debian: boolean } | undefined> {
  for (const cmd of ["apt-get", "dpkg-deb", "dpkg"]) {
    const r = await run(cmd, ["--version"], { timeoutMs: LOCAL_MS });
    if (r.code === 127) return { why: `${cmd} not found`, debian: false };
    if (r.code !== 0) {
      return { why: r.stderr.trim().split("\n")[0] || `${cmd} fails`, debian: true };
    }
  }
  return undefined;
}

/**
 * Find each library in `want` on the system, else in the cache, else fetch it into the cache
 * (announced in one line on stderr; a failure is one hint line). Runs no command when everything
 * is installed or cached. Never throws.
 * @param want The libraries to make available.
 * @param opts Runner, cache dir, environment, log and specs (tests inject them).
 * @returns The paths to dlopen, or undefined when none of `want` is available.
 * @example
 * ```ts
 * const libs = await ensureNativeLibs(["openblas", "onednn"]);
 * libs?.openblas?.path; // "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"
 * ```
 */
export async function ensureNativeLibs(
  want: readonly NativeLib[],
  opts: NativeLibsOptions = {},
): Promise<NativeLibs | undefined> {
  const env = opts.env ?? processEnv, run = opts.run ?? runCommand;
  const log = opts.log ?? ((line: string) => console.error(line));
  const specs = opts.specs ?? nativeLibSpecs(env);
  const out: NativeLibs = {};
  const missing: NativeLib[] = [];
  for (const name of want) {
    const s = specs[name], override = env(s.env), path = s.system.find(exists);
    if (override || path) out[name] = { path: override ?? path!, from: "system", preload: [] };
    else missing.push(name);
  }
  const result = () => (Object.keys(out).length > 0 ? out : undefined);
  if (missing.length === 0) return result();

  const arch = DEB_ARCH[Deno.build.arch];
  const root = opts.cacheDir ?? nativeCacheRoot(env);
  const debian = arch !== undefined && Deno.build.os === "linux";
  const skip = (why: string, names = missing, onDebian = debian) => {
    log(hint(names.map((n) => specs[n]), why, onDebian));
    return result();
  };
  if (["off", "0"].includes(env(NATIVE_ENV) ?? "")) return skip(`${NATIVE_ENV}=off`);
  if (!debian) return skip(`no Debian packages for ${Deno.build.os}/${Deno.build.arch}`);
  if (!root) return skip("no HOME for the cache");
  const archDir = `${root}/${arch}`;
  if (!granted({ name: "read", path: archDir })) return skip(`no read permission for ${root}`);

  const toFetch: NativeLib[] = [];
  for (const name of missing) {
    const entry = await cached(archDir, specs[name].pkg);
    if (entry) out[name] = { path: entry.lib, from: "cache", preload: entry.preload };
    else toFetch.push(name);
  }
  if (toFetch.length === 0) return result();
  if (!granted({ name: "write", path: archDir })) {
    return skip(`no write permission (-W) for ${root}`, toFetch);
  }

  const tools = await toolsMissing(run);
  if (tools) return skip(tools.why, toFetch, tools.debian);
  const home = env("HOME");
  const shown = home && root.startsWith(`${home}/`) ? `~${root.slice(home.length)}` : root;
  log(
    `engine: fetching ${toFetch.map((n) => specs[n].pkg).join(", ")} from Debian into ` +
      `${shown} (once; ${NATIVE_ENV}=off to skip)`,
  );
  const failed: NativeLib[] = [];
  let why = "", timedOut = false;
  try {
    await Deno.mkdir(archDir, { recursive: true });
    await removeStale(archDir);
  } catch (e) {
    return skip(`cannot write ${root}: ${e instanceof Error ? e.message : e}`, toFetch);
  }
  for (const name of toFetch) {
    if (timedOut) { // the network is likely down for the next package too: do not wait again
      failed.push(name);
      continue;
    }
    try {
      const entry = await fetchEntry(run, archDir, specs[name]);
      out[name] = { path: entry.lib, from: "cache", preload: entry.preload };
    } catch (e) {
      failed.push(name);
      why ||= e instanceof Error ? e.message : `${e}`;
      timedOut = e instanceof FetchError && e.timedOut;
    }
  }
  return failed.length > 0 ? skip(`fetch failed: ${why}`, failed) : result();
}

// ---------------------------------------------------------------------------------------------
// Engine glue

let prepared: Promise<NativeLibs | undefined> | undefined;
const held: Deno.DynamicLibrary<Record<string, never>>[] = []; // kept open for the process

// dlopen `paths` by absolute path, in passes until none more loads (a dependency may need
// another first); the dlopen error of the first that never loads.
function preload(paths: readonly string[]): string | undefined {
  let left = [...paths], error: string | undefined;
  for (let progress = true; progress && left.length > 0;) {
    const before = left.length;
    error = undefined;
    left = left.filter((p) => {
      try {
        if (!ffiGranted(p)) throw new Error(`no --allow-ffi for ${p}`);
        held.push(Deno.dlopen(p, {}));
        return false;
      } catch (e) {
        error ??= e instanceof Error ? e.message : `${e}`;
        return true;
      }
    });
    progress = left.length < before;
  }
  return error;
}

/**
 * Once per process, before the BLAS kernels load: make OpenBLAS (and oneDNN unless
 * `DP_ONEDNN=0`) available, dlopen the cached dependencies, and point the loaders at cached
 * libraries through `DP_OPENBLAS` / `DP_ONEDNN_LIB`. Nothing to do with `DP_BLAS=0` or without
 * FFI permission. A fetched library that does not load is reported in one line and left out.
 * @returns What `ensureNativeLibs` found (the first call's answer on later calls).
 */
export function prepareNativeLibs(opts: NativeLibsOptions = {}): Promise<NativeLibs | undefined> {
  prepared ??= (async () => {
    const env = opts.env ?? processEnv;
    if (env(BLAS_ENV) === "0" || !granted({ name: "ffi" })) return undefined;
    const want: NativeLib[] = env(ONEDNN_ENV) === "0" ? ["openblas"] : ["openblas", "onednn"];
    const libs = await ensureNativeLibs(want, opts);
    const specs = opts.specs ?? nativeLibSpecs(env);
    const undo = openMpWaiting(env); // a cached libgomp reads its wait policy when it loads
    try {
      for (const [name, lib] of Object.entries(libs ?? {}) as [NativeLib, NativeLibPath][]) {
        if (lib.from !== "cache") continue;
        const error = preload([...lib.preload, lib.path]);
        if (error) {
          (opts.log ?? console.error)(
            `engine: the cached ${specs[name].pkg} does not load (${error}); ` +
              `continuing without ${specs[name].label}`,
          );
          delete libs![name];
        } else if (env(specs[name].env) === undefined) {
          try {
            Deno.env.set(specs[name].env, lib.path); // child processes inherit the choice
          } catch { /* no env permission: its soname candidate matches the copy loaded here */ }
        }
      }
    } finally {
      undo();
    }
    return libs;
  })();
  return prepared;
}

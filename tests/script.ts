// A project script as a subprocess, with the permissions its deno.json task grants, for the tests
// that run scripts end to end.
const root = new URL("../", import.meta.url).pathname;

/** `deno run <task permissions> scripts/<script>.ts <args>` in the repository. */
export function scriptCommand(
  script: string,
  args: readonly string[],
  opts: { env?: Record<string, string>; stdout?: "piped" | "null" } = {},
): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-R",
      "-W",
      "-E",
      "--allow-ffi",
      "--allow-sys",
      "--allow-run=git,cc",
      `scripts/${script}.ts`,
      ...args,
    ],
    cwd: root,
    env: { NO_COLOR: "1", ...opts.env },
    stdout: opts.stdout ?? "piped",
    stderr: "piped",
  });
}

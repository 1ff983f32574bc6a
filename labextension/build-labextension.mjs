// Builds the prebuilt JupyterLab extension into ../arrakis_jupyter/labextension (package.json
// "jupyterlab.outputDir") from lib/ (run `npm run build:lib` first) with @jupyterlab/builder.
//
// The builder needs the JupyterLab core's package.json (its shared singletons and versions): the
// `staging/` folder of the installed jupyterlab Python package, found through $JUPYTERLAB_CORE_PATH,
// $PYTHON, ../.venv/bin/python or python3 on PATH. No network access is needed (unlike
// `jupyter labextension build`, which now goes through jupyter-builder and may fetch core metadata).
//   node build-labextension.mjs [--development]
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, 'package.json'));
const pkg = JSON.parse(readFileSync(join(here, 'package.json'), 'utf8'));
const outputDir = resolve(here, pkg.jupyterlab.outputDir);

function corePath() {
  if (process.env.JUPYTERLAB_CORE_PATH) return process.env.JUPYTERLAB_CORE_PATH;
  const candidates = [process.env.PYTHON, join(here, '..', '.venv', 'bin', 'python'), 'python3', 'python'];
  const code = 'import jupyterlab, os; print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging"))';
  for (const python of candidates.filter(Boolean)) {
    if (python.includes('/') && !existsSync(python)) continue;
    try {
      const path = execFileSync(python, ['-c', code], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
      if (existsSync(join(path, 'package.json'))) return path;
    } catch {
      // try the next interpreter
    }
  }
  throw new Error('cannot find JupyterLab (set $JUPYTERLAB_CORE_PATH to <site-packages>/jupyterlab/staging, ' +
                  'or $PYTHON to a Python with jupyterlab installed)');
}

if (!existsSync(join(here, 'lib', 'index.js'))) {
  throw new Error('lib/index.js is missing: run `npm run build:lib` first');
}
const core = corePath();
const builder = require.resolve('@jupyterlab/builder/lib/build-labextension.js');
// a clean output: no stale chunks from earlier builds
rmSync(join(outputDir, 'static'), { recursive: true, force: true });
rmSync(join(outputDir, 'schemas'), { recursive: true, force: true });
execFileSync(process.execPath, [builder, '--core-path', core, ...process.argv.slice(2), here], {
  cwd: here,
  stdio: 'inherit'
});
// build_log.json holds the webpack config with absolute paths of this machine: not shipped
rmSync(join(outputDir, 'build_log.json'), { force: true });
console.log(`built the JupyterLab extension ${pkg.name} into ${outputDir} (core: ${core})`);

// The bundle as the Python app reads it (edge/runners/base.py: read_manifest,
// verify_files): manifest.json checked, then every file's sha256 compared with the
// manifest's before anything is loaded. Errors are BundleErrors whose message is shown
// to the user as it is.

export const SUPPORTED_FORMAT_VERSIONS = [1];
export const DEFAULT_TASK = 'text_classification';

export class BundleError extends Error {
  constructor(message) {
    super(message);
    this.name = 'BundleError';
  }
}

function require(cond, message) {
  if (!cond) throw new BundleError(message);
}

const isInt = (v) => Number.isInteger(v);

export function checkMemberName(name, what) {
  require(typeof name === 'string' && name !== '',
          `manifest.json: ${what} must be a non-empty file name`);
  const parts = name.split('/');
  require(!name.startsWith('/') && !parts.includes('..') && !name.includes('\\'),
          `manifest.json: ${what} '${name}' must be a path inside the bundle`);
}

// The checked manifest: {task, model, variant, files, signatures, raw} plus member(),
// getInt(), getStr() (the Python Manifest's methods).
export function parseManifest(text) {
  let raw;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new BundleError(`manifest.json is not valid JSON: ${e.message}`);
  }
  require(raw !== null && typeof raw === 'object' && !Array.isArray(raw),
          'manifest.json must hold a JSON object');
  require(SUPPORTED_FORMAT_VERSIONS.includes(raw.format_version),
          `manifest.json: unsupported format_version ${JSON.stringify(raw.format_version)} ` +
          `(this page reads ${JSON.stringify(SUPPORTED_FORMAT_VERSIONS)})`);
  const task = raw.task ?? DEFAULT_TASK;
  require(typeof task === 'string' && task !== '',
          `manifest.json: task must be a non-empty string, got ${JSON.stringify(task)}`);
  const files = raw.files;
  require(files && typeof files === 'object' && !Array.isArray(files) &&
          Object.keys(files).length > 0,
          "manifest.json: 'files' must map file names to sha256 hex digests");
  for (const [name, digest] of Object.entries(files)) {
    checkMemberName(name, 'file');
    require(typeof digest === 'string' && /^[0-9a-fA-F]{64}$/.test(digest),
            `manifest.json: files['${name}'] is not a sha256 hex digest`);
  }
  const manifest = {
    raw,
    task,
    variant: String(raw.variant ?? 'unknown'),
    files: Object.fromEntries(Object.entries(files).map(([k, v]) => [k, v.toLowerCase()])),
    signatures: raw.signatures ?? null,
    member(key, fallback) {
      const name = raw[key] ?? fallback;
      checkMemberName(name, key);
      require(name in this.files, `manifest.json: ${key} file '${name}' has no sha256 in ` +
              "'files'; refusing to load an unverified file");
      return name;
    },
    getInt(key, fallback, minimum = 0) {
      const v = raw[key] ?? fallback;
      require(isInt(v) && v >= minimum,
              `manifest.json: ${key} must be an integer >= ${minimum}, got ${JSON.stringify(v)}`);
      return v;
    },
    getStr(key, fallback = null) {
      const v = raw[key] ?? fallback;
      require(v === null || typeof v === 'string', `manifest.json: ${key} must be a string`);
      return v;
    },
  };
  manifest.model = manifest.member('model', 'model.tflite');
  return manifest;
}

async function get(url) {
  try {
    return await fetch(url, {cache: 'no-store'});
  } catch (e) {
    throw new BundleError(`cannot reach the server for ${url} (${e.message}); ` +
                          'is `python -m edge.web` still running?');
  }
}

// manifest.json of the bundle served under `base` (a URL ending with '/'); `where` names
// the bundle in messages (its directory on the server).
export async function readManifest(base, where) {
  const response = await get(base + 'manifest.json');
  require(response.status !== 404,
          `Bundle missing: there is no manifest.json in ${where}. Export a bundle first ` +
          '(python -m pipeline run CONFIG), then start the server with --bundle ' +
          'artifacts/<experiment>/edge/bundle.');
  require(response.ok, `manifest.json could not be read (HTTP ${response.status})`);
  return parseManifest(await response.text());
}

export async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

// Every file of the manifest, fetched and checked: name -> Uint8Array. Throws a
// BundleError naming the first file that is missing or whose sha256 differs.
export async function verifyFiles(base, manifest) {
  const out = {};
  for (const [name, expected] of Object.entries(manifest.files)) {
    const response = await get(base + name.split('/').map(encodeURIComponent).join('/'));
    require(response.status !== 404, `Bundle file missing: ${name} is listed in ` +
            'manifest.json but is not in the bundle directory.');
    require(response.ok, `bundle file ${name} could not be read (HTTP ${response.status})`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    const actual = await sha256Hex(bytes);
    require(actual === expected,
            `Hash mismatch: bundle file ${name} failed its sha256 check (manifest ` +
            `${expected.slice(0, 12)}..., file ${actual.slice(0, 12)}...); the bundle is ` +
            'corrupt or was modified.');
    out[name] = bytes;
  }
  return out;
}

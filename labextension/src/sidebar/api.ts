// Client of the arrakis server extension's REST API (/arrakis/api/...), typed after its JSON payloads.
// Requests go through ServerConnection.makeRequest, which adds the token / XSRF headers Jupyter needs.
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export type Status = 'ok' | 'error' | 'interrupted' | string;

/** A number as the API sends it: JSON has no infinities or NaN, so those come as "inf", "-inf", "nan". */
export type Num = number | 'inf' | '-inf' | 'nan';

export interface Page<T> {
  items: T[];
  total: number;
  offset: number;
  limit: number;
}

export interface StoreInfo {
  dir: string;
  path: string;
  exists: boolean;
  schema_version: number | null;
}

export interface Experiment {
  name: string;
  versions: number;
  runs: number;
  created: string | null;
  last_run: string | null;
  last_status: Status | null;
}

export interface VersionSummary {
  v: number;
  hash: string;
  kind: string;
  first_seen: string | null;
  last_seen: string | null;
  runs: number;
  last_run: string | null;
  last_status: Status | null;
  tags: string[];
}

export interface RunSummary {
  run_id: number;
  version: string;
  started: string | null;
  duration_s: number | null;
  status: Status;
  result_type: string | null;
  tags: string[];
  note: string;
  notebook: string | null;
  cell_id: string | null;
}

export interface Metric {
  run_id?: number;
  name: string;
  step: number | null;
  value: Num | null;
}

/** A version with one page of its runs (newest first) and the metrics and artefacts of those runs. */
export interface VersionDetail {
  name: string;
  v: number;
  hash: string;
  kind: string;
  source: string;
  first_seen: string | null;
  last_seen: string | null;
  run_count: number;
  runs: Page<RunSummary>;
  metrics: Metric[];
  artefacts: (Artefact & { run_id: number })[];
}

export interface Artefact {
  hash: string;
  kind: string;
  url: string;
}

export interface RunDetail {
  run_id: number;
  name: string;
  hash: string;
  started: string | null;
  duration_s: number | null;
  status: Status;
  error: string | null;
  result: unknown;
  result_type: string | null;
  stdout: string;
  stderr: string;
  model: unknown;
  environment: unknown;
  notebook: string | null;
  cell_id: string | null;
  tags: string[];
  note: string;
  metrics: Metric[];
  figures: unknown;
  artefacts: Artefact[];
  arguments?: unknown;
}

export interface DiffSide {
  v: number;
  hash: string;
  source: string;
}

export interface ResultComparison {
  path: string;
  a: unknown;
  b: unknown;
  equal: boolean | null;
  max_abs_diff: Num | null;
}

export interface MetricComparison {
  metric: string;
  a: Num | null;
  b: Num | null;
  delta: Num | null;
}

export interface VersionDiff {
  name: string;
  a: DiffSide;
  b: DiffSide;
  unified: string;
  results: ResultComparison[];
  metrics: MetricComparison[];
}

export interface RunPatch {
  note?: string;
  add_tags?: string[];
  remove_tags?: string[];
}

/** An error answered by the API (or the network), with the HTTP status when there was one. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

/** The API's largest page. */
export const MAX_LIMIT = 500;

/** The first `limit` items of a list, in as many API pages as needed (the API caps a page at 500). */
export async function fetchPages<T>(
  fetch: (offset: number, limit: number) => Promise<Page<T>>,
  limit: number
): Promise<Page<T>> {
  const first = await fetch(0, Math.min(limit, MAX_LIMIT));
  const items = first.items.slice();
  while (items.length < Math.min(limit, first.total)) {
    const page = await fetch(items.length, Math.min(limit - items.length, MAX_LIMIT));
    if (!page.items.length) break;
    items.push(...page.items);
  }
  return { items, total: first.total, offset: 0, limit };
}

type Query = Record<string, string | number | null | undefined>;

/** The REST API of one Jupyter server; `dir` is set per request by the caller. */
export class ArrakisAPI {
  constructor(readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()) {}

  /** The URL of an API path (path segments already encoded) with a query string. */
  url(path: string, query: Query = {}): string {
    const params = Object.entries(query)
      .filter(([, v]) => v !== undefined && v !== null && v !== '')
      .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`);
    // dir is always sent, even when it is "" (the server root)
    if (!('dir' in query) || query.dir === '') {
      params.unshift('dir=');
    }
    const base = URLExt.join(this.settings.baseUrl, 'arrakis', 'api', path);
    return params.length ? `${base}?${params.join('&')}` : base;
  }

  async request<T>(method: string, path: string, query: Query, body?: unknown): Promise<T> {
    const init: RequestInit = { method };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers = { 'Content-Type': 'application/json' };
    }
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(this.url(path, query), init, this.settings);
    } catch (err) {
      throw new ApiError(`cannot reach the Jupyter server: ${(err as Error).message}`, 0);
    }
    const text = await response.text();
    let data: unknown = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      const message =
        data && typeof data === 'object' && 'error' in data
          ? String((data as { error: unknown }).error)
          : response.status === 404
            ? 'the arrakis server extension is not available (is arrakis_jupyter installed in the ' +
              "server's environment? `jupyter server extension list` should show arrakis_jupyter)"
            : `${response.status} ${response.statusText}`;
      throw new ApiError(message, response.status);
    }
    return data as T;
  }

  store(dir: string): Promise<StoreInfo> {
    return this.request('GET', 'store', { dir });
  }

  experiments(dir: string, q: string, offset: number, limit: number): Promise<Page<Experiment>> {
    return this.request('GET', 'experiments', { dir, q, offset, limit });
  }

  versions(dir: string, name: string, offset: number, limit: number): Promise<Page<VersionSummary>> {
    return this.request('GET', `experiments/${encodeURIComponent(name)}/versions`, { dir, offset, limit });
  }

  /** A version with the page of its runs (newest first) from `offset`. */
  version(dir: string, name: string, ref: string, offset = 0, limit?: number): Promise<VersionDetail> {
    return this.request(
      'GET',
      `experiments/${encodeURIComponent(name)}/versions/${encodeURIComponent(ref)}`,
      { dir, offset: offset || undefined, limit }
    );
  }

  /** One page of an experiment's runs (oldest first unless `order` is 'desc'), filtered. */
  runs(
    dir: string,
    name: string,
    filters: { hash?: string; status?: string; tag?: string; since?: string; until?: string; order?: 'asc' | 'desc' },
    offset: number,
    limit: number
  ): Promise<Page<RunSummary>> {
    return this.request('GET', `experiments/${encodeURIComponent(name)}/runs`, {
      dir,
      ...filters,
      offset,
      limit
    });
  }

  run(dir: string, runId: number): Promise<RunDetail> {
    return this.request('GET', `runs/${runId}`, { dir });
  }

  diff(dir: string, name: string, a: string, b: string): Promise<VersionDiff> {
    return this.request('GET', `experiments/${encodeURIComponent(name)}/diff`, { dir, a, b });
  }

  deleteVersion(dir: string, name: string, ref: string): Promise<{ deleted_runs: number }> {
    return this.request(
      'DELETE',
      `experiments/${encodeURIComponent(name)}/versions/${encodeURIComponent(ref)}`,
      { dir }
    );
  }

  patchRun(dir: string, runId: number, patch: RunPatch): Promise<RunSummary> {
    return this.request('PATCH', `runs/${runId}`, { dir }, patch);
  }

  /** The URL of an artefact file (for <img src>, links). */
  artefactUrl(dir: string, hash: string): string {
    return this.url(`artefacts/${encodeURIComponent(hash)}`, { dir });
  }
}

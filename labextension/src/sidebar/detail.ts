// The detail area of the Experiments sidebar (and of "open in a tab" copies): one version with its
// source, runs and the selected run's result, metrics and outputs; or two versions compared.
import { ServerConnection } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { ApiError, ArrakisAPI, MAX_LIMIT, Metric, RunDetail, RunSummary, VersionDetail, VersionDiff } from './api';
import { renderSideBySide, renderUnified } from './diff';
import { duration, localTime, plural, statusBadge, stripAnsi, timeEl } from './format';
import { renderSource } from './highlight';
import { ArtefactLoader, el, formatNumber, numeric, renderFigures, renderValue, summarize } from './render';

/** What the detail view asks of its host (the sidebar / the extension). */
export interface DetailHost {
  insert(version: VersionDetail): Promise<void>;
  deleteVersion(view: DetailView, dir: string, name: string, hash: string, v: number): Promise<void>;
  editNote(view: DetailView, dir: string, run: RunDetail): Promise<void>;
  addTag(view: DetailView, dir: string, run: RunDetail): Promise<void>;
  removeTag(view: DetailView, dir: string, run: RunDetail, tag: string): Promise<void>;
  /** Absent in views that are already in a tab. */
  openInTab?(state: DetailState): void;
}

export type DetailState =
  | { mode: 'empty' }
  | { mode: 'version'; dir: string; name: string; ref: string; runId?: number }
  | { mode: 'compare'; dir: string; name: string; a: string; b: string };

function button(label: string, cls: string, title: string, onClick: () => void): HTMLButtonElement {
  const b = el('button', `arrakis-button ${cls}`, label);
  b.title = title;
  b.type = 'button';
  b.onclick = e => {
    e.stopPropagation();
    onClick();
  };
  return b;
}

function section(title: string, cls: string): HTMLElement {
  const s = el('section', `arrakis-section ${cls}`);
  s.appendChild(el('h3', 'arrakis-section-title', title));
  return s;
}

function pre(text: string, cls: string): HTMLElement {
  const p = el('pre', `arrakis-output ${cls}`);
  p.textContent = text;
  return p;
}

export class DetailView extends Widget {
  constructor(
    private api: ArrakisAPI,
    private host: DetailHost,
    private pageSize = 50
  ) {
    super();
    this.addClass('arrakis-detail');
    this.node.tabIndex = -1;
    this.clear();
  }

  /** Emitted when the shown version / run changes (commands update their enabled state). */
  get changed(): ISignal<this, void> {
    return this._changed;
  }
  get state(): DetailState {
    return this._state;
  }
  get version(): VersionDetail | null {
    return this._version;
  }
  get run(): RunDetail | null {
    return this._run;
  }
  get diff(): VersionDiff | null {
    return this._diff;
  }

  setPageSize(n: number): void {
    this.pageSize = n;
  }

  clear(message = 'Select a version to see its source and runs; tick two versions to compare them.'): void {
    this._seq++;
    this._state = { mode: 'empty' };
    this._version = this._run = this._diff = null;
    this.node.replaceChildren(el('div', 'arrakis-placeholder', message));
    this._changed.emit();
  }

  /** Re-show the current state (after edits, deletions or a refresh of the list). */
  async reload(): Promise<void> {
    const s = this._state;
    if (s.mode === 'version') await this.showVersion(s.dir, s.name, s.ref, this._run?.run_id ?? s.runId, true);
    else if (s.mode === 'compare') await this.showCompare(s.dir, s.name, s.a, s.b);
  }

  restore(state: DetailState): Promise<void> {
    if (state.mode === 'version') return this.showVersion(state.dir, state.name, state.ref, state.runId);
    if (state.mode === 'compare') return this.showCompare(state.dir, state.name, state.a, state.b);
    this.clear();
    return Promise.resolve();
  }

  private loading(text: string, keep: boolean): number {
    const seq = ++this._seq;
    if (!keep) this.node.replaceChildren(el('div', 'arrakis-placeholder arrakis-loading', text));
    return seq;
  }

  private fail(err: unknown): void {
    const message = err instanceof ApiError || err instanceof Error ? err.message : String(err);
    this.node.replaceChildren(el('div', 'arrakis-error-banner', message));
  }

  private loader(dir: string): ArtefactLoader {
    return {
      url: (hash: string) => this.api.artefactUrl(dir, hash),
      fetch: async (hash: string) => {
        const r = await ServerConnection.makeRequest(this.api.artefactUrl(dir, hash), {}, this.api.settings);
        if (!r.ok) throw new Error(`artefact ${hash.slice(0, 12)}: ${r.status}`);
        return r;
      }
    };
  }

  // ---- one version ------------------------------------------------------------------------------
  async showVersion(dir: string, name: string, ref: string, runId?: number, keep = false): Promise<void> {
    // a reload keeps as many runs as were shown ("Show more"), one page at least
    const s = this._state;
    const same = keep && s.mode === 'version' && s.dir === dir && s.name === name && s.ref === ref;
    const limit = Math.min(MAX_LIMIT, Math.max(this.pageSize, same ? this._runsShown : 0));
    const seq = this.loading(`Loading ${name} ${ref}…`, keep);
    let version: VersionDetail;
    try {
      version = await this.api.version(dir, name, ref, 0, limit);
    } catch (err) {
      if (seq === this._seq) this.fail(err);
      return;
    }
    if (seq !== this._seq) return;
    this._state = { mode: 'version', dir, name, ref: version.hash, runId };
    this._version = version;
    this._diff = null;
    const runs = version.runs.items; // the newest page
    const selected = runs.find(r => r.run_id === runId) ?? runs[0];
    this._runsShown = runs.length;
    const root = el('div', 'arrakis-version-detail');
    root.dataset.name = version.name;
    root.dataset.hash = version.hash;
    root.dataset.v = String(version.v);

    const header = el('div', 'arrakis-detail-header');
    const title = el('div', 'arrakis-detail-title');
    title.append(
      el('span', 'arrakis-detail-name', version.name),
      el('span', 'arrakis-vnum', `v${version.v}`),
      el('code', 'arrakis-hash', version.hash.slice(0, 12)),
      el('span', 'arrakis-kind', version.kind)
    );
    title.title = version.hash;
    const actions = el('div', 'arrakis-actions');
    actions.append(
      button('Insert into notebook', 'arrakis-insert', 'insert this source into a new cell below the active cell', () =>
        void this.host.insert(version)
      ),
      button('Delete', 'arrakis-delete arrakis-button-danger', 'delete this version and its runs', () =>
        void this.host.deleteVersion(this, dir, version.name, version.hash, version.v)
      )
    );
    if (this.host.openInTab) {
      actions.append(
        button('⤢', 'arrakis-open-tab', 'open this view in a tab', () => this.host.openInTab?.(this._state))
      );
    }
    header.append(title, actions);
    const meta = el(
      'div',
      'arrakis-muted arrakis-detail-meta',
      `first seen ${localTime(version.first_seen)} · last seen ${localTime(version.last_seen)} · ${plural(
        version.run_count,
        'run'
      )}`
    );
    root.append(header, meta);

    const src = section('Source', 'arrakis-source-section');
    src.appendChild(renderSource(version.source));
    root.appendChild(src);

    const runsSection = section(`Runs (${version.run_count})`, 'arrakis-runs-section');
    const runDetail = el('div', 'arrakis-run-detail-host');
    if (runs.length) {
      const table = el('table', 'arrakis-table arrakis-runs');
      const head = table.createTHead().insertRow();
      ['run', 'status', 'started', 'duration', 'result', 'tags / note'].forEach(h =>
        head.appendChild(el('th', undefined, h))
      );
      const body = table.createTBody();
      // older runs come a page at a time from the runs endpoint, newest first; runs recorded meanwhile
      // shift the pages, so a run already shown is skipped
      const shown = new Set<number>();
      let offset = 0;
      let total = version.run_count;
      const addRows = (page: RunSummary[]): void => {
        offset += page.length;
        for (const run of page) {
          if (shown.has(run.run_id)) continue;
          shown.add(run.run_id);
          body.appendChild(this.runRow(run, dir, body, runDetail));
        }
        this._runsShown = shown.size;
        if (offset >= total || !page.length) return;
        const tr = body.insertRow();
        tr.className = 'arrakis-more-row';
        const td = tr.insertCell();
        td.colSpan = 6;
        const label = `Show more (${total - offset} older)`;
        const more = button(label, 'arrakis-more', 'show older runs', async () => {
          more.disabled = true;
          more.textContent = 'Loading…';
          try {
            const next = await this.api.runs(dir, version.name, { hash: version.hash, order: 'desc' }, offset,
                                             this.pageSize);
            if (seq !== this._seq) return;
            total = next.total;
            tr.remove();
            addRows(next.items);
          } catch (err) {
            more.disabled = false;
            more.textContent = `${label}: ${(err as Error).message}`;
          }
        });
        td.appendChild(more);
      };
      addRows(runs);
      const wrap = el('div', 'arrakis-scroll-x');
      wrap.appendChild(table);
      runsSection.appendChild(wrap);
    } else {
      runsSection.appendChild(el('div', 'arrakis-muted', 'no runs'));
    }
    root.append(runsSection, runDetail);
    this.node.replaceChildren(root);
    this._run = null;
    this._changed.emit();
    if (selected) await this.showRun(dir, selected.run_id, runDetail);
  }

  private runRow(run: RunSummary, dir: string, body: HTMLElement, host: HTMLElement): HTMLTableRowElement {
    const tr = document.createElement('tr');
    tr.className = 'arrakis-run-item';
    tr.dataset.runId = String(run.run_id);
    tr.tabIndex = 0;
    const cell = (child: Node | string, cls?: string): void => {
      const td = tr.insertCell();
      if (cls) td.className = cls;
      td.append(child);
    };
    cell(`#${run.run_id}`, 'arrakis-run-id');
    cell(statusBadge(run.status));
    cell(timeEl(run.started));
    cell(duration(run.duration_s), 'arrakis-num');
    cell(run.result_type ?? '—', 'arrakis-result-type');
    const extra = el('span');
    for (const tag of run.tags ?? []) extra.appendChild(el('span', 'arrakis-tag', tag));
    if (run.note) extra.appendChild(el('span', 'arrakis-note', run.note));
    cell(extra);
    const select = (): void => {
      body.querySelectorAll('.arrakis-run-item.arrakis-selected').forEach(r => r.classList.remove('arrakis-selected'));
      tr.classList.add('arrakis-selected');
      void this.showRun(dir, run.run_id, host);
    };
    tr.onclick = select;
    tr.onkeydown = e => {
      if (e.key === 'Enter' || e.key === ' ') {
        e.preventDefault();
        select();
      }
    };
    if (this._state.mode === 'version' && this._state.runId === run.run_id) tr.classList.add('arrakis-selected');
    return tr;
  }

  /** Show one run (result, figures, metrics, outputs, error) in `host`. */
  async showRun(dir: string, runId: number, host?: HTMLElement): Promise<void> {
    const target = host ?? this.node.querySelector<HTMLElement>('.arrakis-run-detail-host');
    if (!target) return;
    if (this._state.mode === 'version') this._state = { ...this._state, runId };
    this.node
      .querySelectorAll('.arrakis-run-item')
      .forEach(r => r.classList.toggle('arrakis-selected', (r as HTMLElement).dataset.runId === String(runId)));
    const seq = this._seq;
    let run: RunDetail;
    try {
      run = await this.api.run(dir, runId);
    } catch (err) {
      if (seq === this._seq) target.replaceChildren(el('div', 'arrakis-error-banner', (err as Error).message));
      return;
    }
    if (seq !== this._seq) return;
    this._run = run;
    target.replaceChildren(this.renderRun(dir, run));
    this._changed.emit();
  }

  private renderRun(dir: string, run: RunDetail): HTMLElement {
    const loader = this.loader(dir);
    const root = el('div', 'arrakis-run-detail');
    root.dataset.runId = String(run.run_id);
    const header = el('div', 'arrakis-detail-header');
    const title = el('div', 'arrakis-detail-title');
    title.append(el('span', 'arrakis-detail-name', `Run #${run.run_id}`), statusBadge(run.status));
    title.appendChild(
      el('span', 'arrakis-muted', ` ${localTime(run.started)} · ${duration(run.duration_s)}`)
    );
    header.appendChild(title);
    root.appendChild(header);
    if (run.notebook) {
      root.appendChild(el('div', 'arrakis-muted', `notebook ${run.notebook}${run.cell_id ? ` · cell ${run.cell_id}` : ''}`));
    }

    // tags and note, editable
    const tags = el('div', 'arrakis-run-tags');
    tags.appendChild(el('span', 'arrakis-label', 'tags'));
    for (const tag of run.tags ?? []) {
      const chip = el('span', 'arrakis-tag arrakis-tag-editable', tag);
      chip.appendChild(
        button('×', 'arrakis-tag-remove', `remove tag ${tag}`, () => void this.host.removeTag(this, dir, run, tag))
      );
      tags.appendChild(chip);
    }
    tags.appendChild(button('+ tag', 'arrakis-link arrakis-add-tag', 'add a tag to this run', () => void this.host.addTag(this, dir, run)));
    root.appendChild(tags);
    const note = el('div', 'arrakis-run-note');
    note.appendChild(el('span', 'arrakis-label', 'note'));
    note.appendChild(el('span', run.note ? 'arrakis-note' : 'arrakis-muted', run.note || 'no note'));
    note.appendChild(button('edit', 'arrakis-link arrakis-edit-note', 'edit the note', () => void this.host.editNote(this, dir, run)));
    root.appendChild(note);

    if (run.error) {
      const s = section('Error', 'arrakis-error-section');
      s.appendChild(pre(stripAnsi(run.error), 'arrakis-traceback'));
      root.appendChild(s);
    }
    const result = section(`Result${run.result_type ? ` · ${run.result_type}` : ''}`, 'arrakis-result-section');
    const resultBox = el('div', 'arrakis-result');
    resultBox.appendChild(renderValue(run.result, loader));
    result.appendChild(resultBox);
    root.appendChild(result);
    const figures = renderFigures(run.figures, loader);
    if (figures) {
      const s = section('Figures', 'arrakis-figures-section');
      s.appendChild(figures);
      root.appendChild(s);
    }
    if (run.metrics?.length) {
      const s = section(`Metrics (${run.metrics.length})`, 'arrakis-metrics-section');
      s.appendChild(metricsTable(run.metrics, this.pageSize));
      root.appendChild(s);
    }
    if (run.stdout) {
      const s = section('stdout', 'arrakis-stdout-section');
      s.appendChild(pre(stripAnsi(run.stdout), 'arrakis-stdout'));
      root.appendChild(s);
    }
    if (run.stderr) {
      const s = section('stderr', 'arrakis-stderr-section');
      s.appendChild(pre(stripAnsi(run.stderr), 'arrakis-stderr'));
      root.appendChild(s);
    }
    if (run.model) {
      const s = section('Model', 'arrakis-model-section');
      s.appendChild(renderValue(run.model, loader, 1));
      root.appendChild(s);
    }
    if (run.environment) {
      const s = section('Environment', 'arrakis-env-section');
      s.appendChild(renderValue(run.environment, loader, 1));
      root.appendChild(s);
    }
    return root;
  }

  // ---- two versions compared ---------------------------------------------------------------------
  async showCompare(dir: string, name: string, a: string, b: string): Promise<void> {
    const seq = this.loading(`Comparing ${name} ${a} and ${b}…`, false);
    let diff: VersionDiff;
    try {
      diff = await this.api.diff(dir, name, a, b);
    } catch (err) {
      if (seq === this._seq) this.fail(err);
      return;
    }
    if (seq !== this._seq) return;
    this._state = { mode: 'compare', dir, name, a: diff.a.hash, b: diff.b.hash };
    this._diff = diff;
    this._version = null;
    this._run = null;
    const root = el('div', 'arrakis-compare-view');
    root.dataset.name = name;
    root.dataset.a = diff.a.hash;
    root.dataset.b = diff.b.hash;
    const header = el('div', 'arrakis-detail-header');
    const title = el('div', 'arrakis-detail-title');
    title.append(
      el('span', 'arrakis-detail-name', name),
      el('span', 'arrakis-vnum', `v${diff.a.v}`),
      el('span', 'arrakis-muted', '→'),
      el('span', 'arrakis-vnum', `v${diff.b.v}`)
    );
    const actions = el('div', 'arrakis-actions');
    let unified = false;
    const body = el('div', 'arrakis-diff-host');
    const draw = (): void => {
      body.replaceChildren(
        unified
          ? renderUnified(diff.unified)
          : renderSideBySide(diff.a.source, diff.b.source, [
              `v${diff.a.v} · ${diff.a.hash.slice(0, 8)}`,
              `v${diff.b.v} · ${diff.b.hash.slice(0, 8)}`
            ])
      );
    };
    const toggle = button('Unified', 'arrakis-toggle-unified', 'switch between side-by-side and unified diff', () => {
      unified = !unified;
      toggle.textContent = unified ? 'Side by side' : 'Unified';
      draw();
    });
    actions.append(
      toggle,
      button('⇄', 'arrakis-swap', 'swap the two versions', () => void this.showCompare(dir, name, diff.b.hash, diff.a.hash))
    );
    if (this.host.openInTab) {
      actions.append(button('⤢', 'arrakis-open-tab', 'open this comparison in a tab', () => this.host.openInTab?.(this._state)));
    }
    header.append(title, actions);
    root.appendChild(header);
    const src = section('Source', 'arrakis-diff-section');
    draw();
    if (!diff.unified) src.appendChild(el('div', 'arrakis-muted', 'the sources are identical up to whitespace'));
    src.appendChild(body);
    root.appendChild(src);

    const results = section('Results (last successful run of each)', 'arrakis-compare-results');
    if (diff.results.length) {
      const table = el('table', 'arrakis-table');
      const head = table.createTHead().insertRow();
      ['path', `v${diff.a.v}`, `v${diff.b.v}`, '', 'max |Δ|'].forEach(h => head.appendChild(el('th', undefined, h)));
      const tbody = table.createTBody();
      for (const r of diff.results.slice(0, 500)) {
        const tr = tbody.insertRow();
        tr.className = r.equal ? 'arrakis-equal' : 'arrakis-different';
        tr.insertCell().textContent = r.path || '(result)';
        // the server sends display strings (reprs); other values are summarised here
        tr.insertCell().textContent = typeof r.a === 'string' ? r.a : summarize(r.a);
        tr.insertCell().textContent = typeof r.b === 'string' ? r.b : summarize(r.b);
        const eq = tr.insertCell();
        eq.textContent = r.equal === null || r.equal === undefined ? '?' : r.equal ? '=' : '≠';
        eq.className = 'arrakis-eq';
        const d = tr.insertCell();
        d.className = 'arrakis-num';
        d.textContent = formatNumber(r.max_abs_diff);
      }
      const wrap = el('div', 'arrakis-scroll-x');
      wrap.appendChild(table);
      results.appendChild(wrap);
    } else {
      results.appendChild(el('div', 'arrakis-muted', 'no results to compare'));
    }
    root.appendChild(results);

    if (diff.metrics.length) {
      const metrics = section('Metrics (final values of the last run)', 'arrakis-compare-metrics');
      const table = el('table', 'arrakis-table');
      const head = table.createTHead().insertRow();
      ['metric', `v${diff.a.v}`, `v${diff.b.v}`, 'Δ'].forEach(h => head.appendChild(el('th', undefined, h)));
      const tbody = table.createTBody();
      for (const m of diff.metrics) {
        const tr = tbody.insertRow();
        tr.insertCell().textContent = m.metric;
        for (const v of [m.a, m.b, m.delta]) {
          const td = tr.insertCell();
          td.className = 'arrakis-num';
          td.textContent = formatNumber(v, '—');
        }
        const delta = numeric(m.delta);
        if (delta !== null && delta !== 0 && !Number.isNaN(delta)) {
          tr.cells[3].classList.add(delta > 0 ? 'arrakis-delta-up' : 'arrakis-delta-down');
        }
      }
      metrics.appendChild(table);
      root.appendChild(metrics);
    }
    this.node.replaceChildren(root);
    this._changed.emit();
  }

  private _seq = 0;
  private _runsShown = 0;
  private _state: DetailState = { mode: 'empty' };
  private _version: VersionDetail | null = null;
  private _run: RunDetail | null = null;
  private _diff: VersionDiff | null = null;
  private _changed = new Signal<this, void>(this);
}

/** Metrics of a run: the last value of each metric, with every step on demand. */
function metricsTable(metrics: Metric[], pageSize: number): HTMLElement {
  const byName = new Map<string, Metric[]>();
  for (const m of metrics) {
    const list = byName.get(m.name) ?? [];
    list.push(m);
    byName.set(m.name, list);
  }
  const table = el('table', 'arrakis-table arrakis-metrics');
  const head = table.createTHead().insertRow();
  ['metric', 'last value', 'step', 'points'].forEach(h => head.appendChild(el('th', undefined, h)));
  const body = table.createTBody();
  for (const [name, list] of byName) {
    const last = list[list.length - 1];
    const tr = body.insertRow();
    tr.insertCell().textContent = name;
    const v = tr.insertCell();
    v.className = 'arrakis-num';
    v.textContent = formatNumber(last.value, '—');
    tr.insertCell().textContent = last.step === null || last.step === undefined ? '' : String(last.step);
    const n = tr.insertCell();
    n.className = 'arrakis-num';
    if (list.length > 1) {
      const values = list.map(m => m.value).filter((x): x is number => typeof x === 'number');
      n.append(String(list.length), ' ', sparkline(values));
      n.title = list
        .slice(-pageSize)
        .map(m => `${m.step ?? ''}: ${formatNumber(m.value, '—')}`)
        .join('\n');
    } else {
      n.textContent = '1';
    }
  }
  return table;
}

/** A tiny inline SVG line of a metric's values. */
function sparkline(values: number[]): SVGElement {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'arrakis-sparkline');
  svg.setAttribute('viewBox', '0 0 60 16');
  svg.setAttribute('width', '60');
  svg.setAttribute('height', '16');
  if (values.length < 2) return svg;
  const step = Math.max(1, Math.floor(values.length / 120));
  const pts = values.filter((_, i) => i % step === 0);
  const lo = Math.min(...pts);
  const hi = Math.max(...pts);
  const path = document.createElementNS(ns, 'polyline');
  path.setAttribute(
    'points',
    pts.map((v, i) => `${((i / (pts.length - 1)) * 60).toFixed(1)},${(15 - ((v - lo) / (hi - lo || 1)) * 14).toFixed(1)}`).join(' ')
  );
  svg.appendChild(path);
  return svg;
}


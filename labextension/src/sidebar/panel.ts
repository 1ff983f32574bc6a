// The "Experiments" sidebar: a search box, the experiments of the active notebook's store (one page
// at a time), their versions when expanded, and a detail area (DetailView) below a split handle.
import { ISignal, Signal } from '@lumino/signaling';
import { Message } from '@lumino/messaging';
import { Panel, SplitPanel, Widget } from '@lumino/widgets';

import { ApiError, ArrakisAPI, Experiment, fetchPages, Page, StoreInfo, VersionSummary } from './api';
import { DetailHost, DetailView } from './detail';
import { plural, relativeTime, statusBadge, tagChips, timeEl } from './format';
import { el } from './render';

export interface SelectedVersion {
  name: string;
  hash: string;
  v: number;
}

interface Expanded {
  limit: number;
  page: Page<VersionSummary> | null;
  error: string | null;
}

export interface PanelOptions {
  api: ArrakisAPI;
  host: DetailHost;
  pageSize?: number;
}

export class ExperimentsPanel extends Panel {
  readonly detail: DetailView;

  constructor(options: PanelOptions) {
    super();
    this.api = options.api;
    this.host = options.host;
    this.pageSize = options.pageSize ?? 50;
    this.expLimit = this.pageSize;
    this.id = 'arrakis-experiments';
    this.addClass('arrakis-panel');

    // header: title, buttons, search, store line
    const header = new Widget();
    header.addClass('arrakis-header');
    const bar = el('div', 'arrakis-toolbar');
    bar.appendChild(el('span', 'arrakis-title', 'Experiments'));
    this.compareButton = el('button', 'arrakis-button arrakis-compare', 'Compare');
    this.compareButton.type = 'button';
    this.compareButton.title = 'tick two versions of an experiment to compare them';
    this.compareButton.onclick = () => void this.compare();
    const refresh = el('button', 'arrakis-button arrakis-refresh', '⟳');
    refresh.type = 'button';
    refresh.title = 'refresh';
    refresh.setAttribute('aria-label', 'refresh');
    refresh.onclick = () => void this.refresh();
    bar.append(this.compareButton, refresh);
    this.search = el('input', 'arrakis-search jp-mod-styled');
    this.search.type = 'search';
    this.search.placeholder = 'Filter experiments';
    this.search.setAttribute('aria-label', 'filter experiments by name');
    this.search.oninput = () => {
      window.clearTimeout(this.searchTimer);
      this.searchTimer = window.setTimeout(() => this.setQuery(this.search.value), 200);
    };
    this.storeLine = el('div', 'arrakis-store-line arrakis-muted');
    header.node.append(bar, this.search, this.storeLine);

    this.listWidget = new Widget();
    this.listWidget.addClass('arrakis-list-pane');
    this.list = el('div', 'arrakis-exp-list');
    this.list.setAttribute('role', 'tree');
    this.listWidget.node.appendChild(this.list);

    this.detail = new DetailView(this.api, options.host, this.pageSize);
    this.detail.changed.connect(() => this._changed.emit(), this);
    const split = new SplitPanel({ orientation: 'vertical', spacing: 4 });
    split.addClass('arrakis-split');
    split.addWidget(this.listWidget);
    split.addWidget(this.detail);
    split.setRelativeSizes([0.45, 0.55]);
    this.addWidget(header);
    this.addWidget(split);
    this.updateCompareButton();
    this.renderList();
  }

  /** Emitted when the selection or the shown version/run changes (for command states). */
  get changed(): ISignal<this, void> {
    return this._changed;
  }
  /** Emitted after each drawn refresh with its duration in ms. */
  get refreshed(): ISignal<this, number> {
    return this._refreshed;
  }
  get dir(): string {
    return this._dir;
  }
  get selection(): readonly SelectedVersion[] {
    return this._selection;
  }
  get loaded(): boolean {
    return this._loaded;
  }
  /** ms taken by the last refresh, from its start to the list drawn in the DOM. */
  get lastDrawMs(): number {
    return this._lastDrawMs;
  }
  get canCompare(): boolean {
    return this._selection.length === 2;
  }

  /** The version commands act on: the one shown in the detail area, else the only ticked one. */
  get currentVersion(): SelectedVersion | null {
    const v = this.detail.version;
    if (v && this.detail.state.mode === 'version') return { name: v.name, hash: v.hash, v: v.v };
    return this._selection.length === 1 ? this._selection[0] : null;
  }

  /** Switch to the store of another notebook directory (resets expansion, selection and detail). */
  setDir(dir: string): Promise<void> {
    if (dir === this._dir && this._loaded) return Promise.resolve();
    const changed = dir !== this._dir;
    this._dir = dir;
    if (changed) {
      this.expanded.clear();
      this._selection = [];
      this.expLimit = this.pageSize;
      this.lastSignature = '';
      this.detail.clear();
      this.updateCompareButton();
      this._changed.emit();
    }
    if (!this.isVisible) {
      this._stale = true;
      return Promise.resolve();
    }
    return this.refresh();
  }

  setPageSize(n: number): void {
    const size = Math.max(1, Math.min(500, Math.floor(n) || 50));
    if (size === this.pageSize) return;
    this.pageSize = size;
    this.expLimit = size; // back to one page
    this.detail.setPageSize(size);
    if (this._loaded) void this.refresh();
  }

  setQuery(q: string): Promise<void> {
    if (this.search.value !== q) this.search.value = q;
    if (q === this.query) return Promise.resolve();
    this.query = q;
    this.expLimit = this.pageSize;
    return this.refresh();
  }

  /** Mark the list out of date: refreshed now if visible, else when the panel is next shown. */
  invalidate(): void {
    if (this.isVisible) void this.refresh();
    else this._stale = true;
  }

  /** Resolves once the list is drawn (refreshing first if it was never loaded or is out of date). */
  ready(): Promise<void> {
    if (this.inflight) return this.latest;
    if (!this._loaded || this._stale) return this.refresh();
    return Promise.resolve();
  }

  /** Re-read the store; resolves once the (latest requested) list is drawn. */
  refresh(): Promise<void> {
    const p = this.doRefresh(++this.seq);
    this.latest = p;
    return p;
  }

  private async doRefresh(seq: number): Promise<void> {
    const t0 = performance.now();
    const dir = this._dir;
    const q = this.query;
    this.listWidget.addClass('arrakis-mod-loading');
    this.inflight++;
    try {
      const [store, experiments] = await Promise.all([
        this.api.store(dir),
        fetchPages((offset, limit) => this.api.experiments(dir, q, offset, limit), this.expLimit)
      ]);
      const names = new Set(experiments.items.map(e => e.name));
      const open = [...this.expanded.entries()].filter(([name]) => names.has(name));
      const pages = await Promise.all(
        open.map(([name, st]) =>
          fetchPages((offset, limit) => this.api.versions(dir, name, offset, limit), st.limit).then(
            page => ({ name, page, error: null as string | null }),
            (err: Error) => ({ name, page: null, error: err.message })
          )
        )
      );
      if (seq !== this.seq) return this.latest;
      for (const { name, page, error } of pages) {
        const st = this.expanded.get(name);
        if (st) {
          st.page = page;
          st.error = error;
        }
      }
      this.store = store;
      this.experiments = experiments;
      this.error = null;
      this._loaded = true;
      this._stale = false;
      // keep only ticked versions that still exist
      const known = new Set<string>();
      for (const { name, page } of pages) page?.items.forEach(v => known.add(`${name}\0${v.hash}`));
      const before = this._selection.length;
      this._selection = this._selection.filter(s => !this.expanded.has(s.name) || known.has(`${s.name}\0${s.hash}`));
      if (this._selection.length !== before) this._changed.emit();
      const signature = JSON.stringify([store, experiments, pages, q]);
      if (signature !== this.lastSignature) {
        this.lastSignature = signature;
        this.renderList();
        void this.reloadDetailIfChanged();
      } else {
        this.updateTimes(); // nothing new: only "3 min ago" labels move on
      }
    } catch (err) {
      if (seq !== this.seq) return this.latest;
      this.error = err instanceof ApiError || err instanceof Error ? err.message : String(err);
      this.lastSignature = '';
      this.renderList();
    } finally {
      this.inflight--;
      if (seq === this.seq) this.listWidget.removeClass('arrakis-mod-loading');
    }
    this._lastDrawMs = performance.now() - t0;
    this.list.dataset.drawMs = this._lastDrawMs.toFixed(1);
    this._refreshed.emit(this._lastDrawMs);
  }

  /** The version shown in the detail area got new runs: show them (keeping the selected run). */
  private async reloadDetailIfChanged(): Promise<void> {
    const shown = this.detail.version;
    if (!shown || this.detail.state.mode !== 'version') return;
    const st = this.expanded.get(shown.name);
    const summary = st?.page?.items.find(v => v.hash === shown.hash);
    if (summary && summary.runs !== shown.run_count) await this.detail.reload();
  }

  // ---- rendering --------------------------------------------------------------------------------
  private updateTimes(): void {
    const now = Date.now();
    this.list.querySelectorAll('time').forEach(t => {
      if (t.dateTime) t.textContent = relativeTime(t.dateTime, now);
    });
  }

  /** A selector finding the focused list element again after a redraw. */
  private focusedSelector(): string | null {
    const active = document.activeElement as HTMLElement | null;
    if (!active || !this.list.contains(active)) return null;
    const q = (v: string | undefined): string => CSS.escape(v ?? '');
    const version = active.closest<HTMLElement>('.arrakis-version-item');
    const exp = active.closest<HTMLElement>('.arrakis-exp-item');
    let base: string;
    if (version) base = `.arrakis-version-item[data-name="${q(version.dataset.name)}"][data-hash="${q(version.dataset.hash)}"]`;
    else if (exp) base = `.arrakis-exp-item[data-name="${q(exp.dataset.name)}"] > .arrakis-exp-row`;
    else return active.classList.contains('arrakis-more-experiments') ? '.arrakis-more-experiments' : null;
    const own = [...active.classList].find(c => c.startsWith('arrakis-') && c !== 'arrakis-version-item');
    return active === version || active.classList.contains('arrakis-exp-row') || !own ? base : `${base} .${own}`;
  }

  private renderList(): void {
    const focused = this.focusedSelector();
    const frag = document.createDocumentFragment();
    this.renderStoreLine();
    if (this.error) {
      frag.appendChild(el('div', 'arrakis-error-banner', this.error));
    }
    const exps = this.experiments;
    if (!this.error && exps && !exps.items.length) {
      let text: string;
      if (this.query) text = `No experiment matches “${this.query}”.`;
      else if (this.store && !this.store.exists)
        text =
          'No experiments recorded here yet. In a notebook, run %load_ext arrakis_jupyter, then a cell ' +
          'starting with %%arrakis NAME or %%arrakis_log NAME.';
      else text = 'The store has no experiments.';
      frag.appendChild(el('div', 'arrakis-placeholder arrakis-empty', text));
    }
    if (exps) {
      for (const exp of exps.items) frag.appendChild(this.renderExperiment(exp));
      if (exps.total > exps.items.length) {
        const more = el(
          'button',
          'arrakis-button arrakis-more arrakis-more-experiments',
          `Show more (${exps.items.length} of ${exps.total})`
        );
        more.type = 'button';
        more.onclick = () => {
          this.expLimit = Math.min(exps.total, this.expLimit + this.pageSize);
          void this.refresh();
        };
        frag.appendChild(more);
      }
    }
    this.list.replaceChildren(frag);
    if (focused) this.list.querySelector<HTMLElement>(focused)?.focus({ preventScroll: true });
  }

  private renderStoreLine(): void {
    const s = this.store;
    const where = this._dir ? `${this._dir}/` : 'server root';
    if (!s) {
      this.storeLine.textContent = this.error ? '' : `Loading the store of ${where}…`;
      return;
    }
    const exps = this.experiments;
    const count = exps ? ` · ${plural(exps.total, 'experiment')}${this.query ? ' matching' : ''}` : '';
    // the end of the path says most: …/project/experiments
    const parts = s.path.split(/[\\/]/).filter(Boolean);
    const short = parts.length > 3 ? `…/${parts.slice(-3).join('/')}` : s.path;
    this.storeLine.textContent = `${s.exists ? short : `no store yet: ${short}`}${count}`;
    this.storeLine.title = s.path;
  }

  private renderExperiment(exp: Experiment): HTMLElement {
    const item = el('div', 'arrakis-exp-item');
    item.dataset.name = exp.name;
    item.setAttribute('role', 'treeitem');
    const st = this.expanded.get(exp.name);
    item.setAttribute('aria-expanded', st ? 'true' : 'false');
    const row = el('div', 'arrakis-exp-row');
    row.tabIndex = 0;
    row.append(
      el('span', 'arrakis-caret', st ? '▾' : '▸'),
      el('span', 'arrakis-exp-name', exp.name),
      el('span', 'arrakis-counts', `${plural(exp.versions, 'version')} · ${plural(exp.runs, 'run')}`),
      statusBadge(exp.last_status),
      timeEl(exp.last_run)
    );
    row.title = `${exp.name}: ${plural(exp.versions, 'version')}, ${plural(exp.runs, 'run')}`;
    row.onclick = () => void this.toggle(exp.name);
    row.onkeydown = e => {
      if (e.key === 'Enter' || e.key === ' ' || e.key === 'ArrowRight' || e.key === 'ArrowLeft') {
        e.preventDefault();
        const open = !!st;
        if (e.key === 'Enter' || e.key === ' ' || (e.key === 'ArrowRight') !== open) void this.toggle(exp.name);
      }
    };
    item.appendChild(row);
    if (st) item.appendChild(this.renderVersions(exp, st));
    return item;
  }

  private renderVersions(exp: Experiment, st: Expanded): HTMLElement {
    const box = el('div', 'arrakis-version-list');
    box.setAttribute('role', 'group');
    if (st.error) {
      box.appendChild(el('div', 'arrakis-error-banner', st.error));
      return box;
    }
    if (!st.page) {
      box.appendChild(el('div', 'arrakis-muted arrakis-loading', 'loading versions…'));
      return box;
    }
    const shown = this.detail.version;
    for (const v of st.page.items) {
      const item = el('div', 'arrakis-version-item');
      item.dataset.name = exp.name;
      item.dataset.hash = v.hash;
      item.dataset.v = String(v.v);
      item.tabIndex = 0;
      item.setAttribute('role', 'treeitem');
      const ticked = this._selection.some(s => s.name === exp.name && s.hash === v.hash);
      if (ticked) item.classList.add('arrakis-ticked');
      if (shown && shown.name === exp.name && shown.hash === v.hash && this.detail.state.mode === 'version') {
        item.classList.add('arrakis-selected');
      }
      const box2 = el('input', 'arrakis-version-check');
      box2.type = 'checkbox';
      box2.checked = ticked;
      box2.title = 'tick two versions to compare them';
      box2.setAttribute('aria-label', `select v${v.v} for comparison`);
      box2.onclick = e => {
        e.stopPropagation();
        this.toggleSelected({ name: exp.name, hash: v.hash, v: v.v });
      };
      const insert = el('button', 'arrakis-icon-button arrakis-insert', '⤓');
      insert.type = 'button';
      insert.title = 'insert into notebook (a new cell below the active cell)';
      insert.setAttribute('aria-label', `insert v${v.v} into the notebook`);
      insert.onclick = e => {
        e.stopPropagation();
        void this.insert(exp.name, v.hash);
      };
      item.append(
        box2,
        el('span', 'arrakis-vnum', `v${v.v}`),
        el('code', 'arrakis-hash', v.hash.slice(0, 8)),
        tagChips(v.tags),
        el('span', 'arrakis-counts', plural(v.runs, 'run')),
        statusBadge(v.last_status),
        timeEl(v.first_seen),
        insert
      );
      item.title = `v${v.v} ${v.hash} (${v.kind}) · first seen ${v.first_seen ?? '—'}`;
      item.onclick = e => {
        if (e.ctrlKey || e.metaKey || e.shiftKey) {
          e.preventDefault();
          this.toggleSelected({ name: exp.name, hash: v.hash, v: v.v });
        } else {
          void this.showVersion(exp.name, v.hash);
        }
      };
      item.onkeydown = e => {
        if (e.key === 'Enter') void this.showVersion(exp.name, v.hash);
        else if (e.key === ' ') {
          e.preventDefault();
          this.toggleSelected({ name: exp.name, hash: v.hash, v: v.v });
        }
      };
      box.appendChild(item);
    }
    if (st.page.total > st.page.items.length) {
      const more = el(
        'button',
        'arrakis-button arrakis-more arrakis-more-versions',
        `Show more (${st.page.items.length} of ${st.page.total})`
      );
      more.type = 'button';
      more.onclick = () => {
        st.limit = Math.min(st.page?.total ?? st.limit, st.limit + this.pageSize);
        void this.refresh();
      };
      box.appendChild(more);
    }
    return box;
  }

  private updateCompareButton(): void {
    const s = this._selection;
    this.compareButton.disabled = s.length !== 2;
    this.compareButton.textContent =
      s.length === 2 ? `Compare v${Math.min(s[0].v, s[1].v)} ↔ v${Math.max(s[0].v, s[1].v)}` : 'Compare';
  }

  // ---- actions ------------------------------------------------------------------------------------
  /** Expand or collapse an experiment (its versions are fetched when expanded). */
  async toggle(name: string, open?: boolean): Promise<void> {
    const isOpen = this.expanded.has(name);
    if (open ?? !isOpen) {
      if (!isOpen) this.expanded.set(name, { limit: this.pageSize, page: null, error: null });
    } else {
      this.expanded.delete(name);
    }
    this.lastSignature = '';
    this.renderList();
    if (this.expanded.has(name)) await this.refresh();
  }

  /** Tick / untick a version for comparison (two at most, of one experiment). */
  toggleSelected(version: SelectedVersion): void {
    const i = this._selection.findIndex(s => s.name === version.name && s.hash === version.hash);
    if (i >= 0) this._selection.splice(i, 1);
    else {
      this._selection = this._selection.filter(s => s.name === version.name);
      this._selection.push(version);
      if (this._selection.length > 2) this._selection.shift();
    }
    this.syncTicks();
    this.updateCompareButton();
    this._changed.emit();
  }

  /** Select exactly these versions (by ref: hash, prefix or vN) of one experiment. */
  async select(name: string, refs: string[]): Promise<void> {
    await this.toggle(name, true);
    const items = this.expanded.get(name)?.page?.items ?? [];
    const pick = (ref: string): VersionSummary | undefined =>
      items.find(v => v.hash === ref || `v${v.v}` === ref || (ref.length >= 4 && v.hash.startsWith(ref)));
    this._selection = refs
      .map(pick)
      .filter((v): v is VersionSummary => !!v)
      .slice(-2)
      .map(v => ({ name, hash: v.hash, v: v.v }));
    this.syncTicks();
    this.updateCompareButton();
    this._changed.emit();
  }

  private syncTicks(): void {
    this.list.querySelectorAll<HTMLElement>('.arrakis-version-item').forEach(item => {
      const on = this._selection.some(s => s.name === item.dataset.name && s.hash === item.dataset.hash);
      item.classList.toggle('arrakis-ticked', on);
      const box = item.querySelector<HTMLInputElement>('.arrakis-version-check');
      if (box) box.checked = on;
    });
  }

  async showVersion(name: string, ref: string, runId?: number): Promise<void> {
    const p = this.detail.showVersion(this._dir, name, ref, runId);
    this.list.querySelectorAll<HTMLElement>('.arrakis-version-item').forEach(item => {
      item.classList.toggle('arrakis-selected', item.dataset.name === name && item.dataset.hash === ref);
    });
    await p;
  }

  /** Compare the two ticked versions (older on the left), or the given ones. */
  async compare(name?: string, a?: string, b?: string): Promise<void> {
    if (name && a && b) {
      await this.detail.showCompare(this._dir, name, a, b);
      return;
    }
    if (this._selection.length !== 2) return;
    const [x, y] = [...this._selection].sort((p, q) => p.v - q.v);
    this.list.querySelectorAll('.arrakis-version-item.arrakis-selected').forEach(i => i.classList.remove('arrakis-selected'));
    await this.detail.showCompare(this._dir, x.name, x.hash, y.hash);
  }

  /** Insert a version's source into the notebook (through the detail host). */
  async insert(name: string, ref: string): Promise<void> {
    const shown = this.detail.version;
    const version =
      shown && shown.name === name && shown.hash === ref ? shown : await this.api.version(this._dir, name, ref);
    await this.host.insert(version);
  }

  /** After a deletion: forget the version everywhere and refresh. */
  async forget(name: string, hash: string): Promise<void> {
    this._selection = this._selection.filter(s => !(s.name === name && s.hash === hash));
    const s = this.detail.state;
    if (
      (s.mode === 'version' && s.name === name && s.ref === hash) ||
      (s.mode === 'compare' && s.name === name && (s.a === hash || s.b === hash))
    ) {
      this.detail.clear();
    }
    this.updateCompareButton();
    this._changed.emit();
    await this.refresh();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    if (this._stale || !this._loaded) void this.refresh();
  }

  protected onActivateRequest(msg: Message): void {
    super.onActivateRequest(msg);
    this.search.focus();
  }

  private api: ArrakisAPI;
  private host: DetailHost;
  private pageSize: number;
  private expLimit: number;
  private query = '';
  private _dir = '';
  private _loaded = false;
  private _stale = true;
  private seq = 0;
  private inflight = 0;
  private latest: Promise<void> = Promise.resolve();
  private lastSignature = '';
  private _lastDrawMs = 0;
  private store: StoreInfo | null = null;
  private experiments: Page<Experiment> | null = null;
  private error: string | null = null;
  private expanded = new Map<string, Expanded>();
  private _selection: SelectedVersion[] = [];
  private searchTimer = 0;
  private search: HTMLInputElement;
  private storeLine: HTMLElement;
  private list: HTMLElement;
  private listWidget: Widget;
  private compareButton: HTMLButtonElement;
  private _changed = new Signal<this, void>(this);
  private _refreshed = new Signal<this, number>(this);
}

// JupyterLab extension of arrakis_jupyter: the "Experiments" sidebar over the experiment store
// (REST API of the arrakis_jupyter server extension), its commands and settings.
import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  Dialog,
  ICommandPalette,
  InputDialog,
  MainAreaWidget,
  Notification,
  showDialog,
  showErrorMessage
} from '@jupyterlab/apputils';
import { PathExt } from '@jupyterlab/coreutils';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { ReadonlyPartialJSONObject } from '@lumino/coreutils';

import { experimentsIcon } from './icon';
import { ArrakisAPI, RunDetail, RunPatch, VersionDetail } from './sidebar/api';
import { DetailHost, DetailState, DetailView } from './sidebar/detail';
import { magicName, plural } from './sidebar/format';
import { ExperimentsPanel } from './sidebar/panel';

const PLUGIN_ID = 'arrakis-jupyter:plugin';
const CATEGORY = 'Experiments';

export namespace CommandIDs {
  export const open = 'arrakis:open';
  export const refresh = 'arrakis:refresh';
  export const compare = 'arrakis:compare';
  export const insert = 'arrakis:insert-version';
  export const remove = 'arrakis:delete-version';
  export const note = 'arrakis:edit-run-note';
  export const tag = 'arrakis:add-run-tag';
}

/** The directory (relative to the server root) of a notebook; "" for the root. */
function notebookDir(app: JupyterFrontEnd, panel: NotebookPanel | null): string {
  if (!panel) return '';
  const local = app.serviceManager.contents.localPath(panel.context.path);
  const dir = PathExt.dirname(local);
  return dir === '.' ? '' : dir;
}

/** The magic line that records a cell version again: as it was recorded when the run says so. */
function magicLine(version: VersionDetail, args: unknown): string {
  const name = magicName(version.name);
  if (args && typeof args === 'object' && !Array.isArray(args)) {
    const a = args as { model?: unknown; tools?: unknown };
    const model = typeof a.model === 'string' && a.model ? ` --model ${a.model}` : '';
    if (!('tools' in a)) return `%%arrakis_log ${name}${model}`;
    const tools = Array.isArray(a.tools) && a.tools.length ? ` --tools ${a.tools.join(',')}` : '';
    return `%%arrakis ${name}${model}${tools}`;
  }
  return `%%arrakis ${name}`;
}

function str(args: ReadonlyPartialJSONObject, key: string): string | undefined {
  const v = args[key];
  return typeof v === 'string' && v ? v : undefined;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'The Experiments sidebar: versions, runs and diffs of experiments recorded with %%arrakis.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ISettingRegistry, ILayoutRestorer, ILabShell],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    palette: ICommandPalette | null,
    settingRegistry: ISettingRegistry | null,
    restorer: ILayoutRestorer | null,
    labShell: ILabShell | null
  ) => {
    const api = new ArrakisAPI(app.serviceManager.serverSettings);
    let tabs = 0;

    const patchRun = async (view: DetailView, dir: string, run: RunDetail, patch: RunPatch): Promise<void> => {
      try {
        await api.patchRun(dir, run.run_id, patch);
      } catch (err) {
        await showErrorMessage('Cannot update the run', (err as Error).message);
        return;
      }
      await view.reload();
      if (view !== panel.detail && panel.detail.run?.run_id === run.run_id) await panel.detail.reload();
      await panel.refresh();
    };

    const host: DetailHost = {
      insert: async (version: VersionDetail) => {
        const nb = tracker.currentWidget;
        if (!nb) {
          await showErrorMessage(
            'Insert into notebook',
            'Open a notebook first: the version goes into a new cell below its active cell.'
          );
          return;
        }
        let source = version.source;
        if (version.kind === 'cell') {
          // the recorded arguments of the version's last run say which magic (and tools) it used
          let args: unknown = undefined;
          const last = version.runs.items[0]; // the newest run
          if (last) {
            try {
              args = (await api.run(panel.dir, last.run_id)).arguments;
            } catch {
              args = undefined;
            }
          }
          source = `${magicLine(version, args)}\n${source}`;
        }
        const notebook = nb.content;
        NotebookActions.insertBelow(notebook);
        if (notebook.activeCell && notebook.activeCell.model.type !== 'code') {
          NotebookActions.changeCellType(notebook, 'code');
        }
        notebook.activeCell?.model.sharedModel.setSource(source);
        app.shell.activateById(nb.id);
      },
      deleteVersion: async (view, dir, name, hash, v) => {
        const answer = await showDialog({
          title: 'Delete version',
          body: `Delete ${name} v${v} (${hash.slice(0, 12)}) and all its runs from the store? This cannot be undone.`,
          buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
        });
        if (!answer.button.accept) return;
        try {
          const { deleted_runs } = await api.deleteVersion(dir, name, hash);
          Notification.success(`Deleted ${name} v${v} and ${plural(deleted_runs, 'run')}.`, { autoClose: 4000 });
        } catch (err) {
          await showErrorMessage('Cannot delete the version', (err as Error).message);
          return;
        }
        if (view !== panel.detail) view.clear(`${name} v${v} was deleted.`);
        await panel.forget(name, hash);
      },
      editNote: async (view, dir, run) => {
        const answer = await InputDialog.getText({
          title: `Note of run #${run.run_id}`,
          text: run.note ?? '',
          placeholder: 'a free-text note kept with the run'
        });
        if (!answer.button.accept || answer.value === null || answer.value === run.note) return;
        await patchRun(view, dir, run, { note: answer.value });
      },
      addTag: async (view, dir, run) => {
        const answer = await InputDialog.getText({
          title: `Tag run #${run.run_id}`,
          placeholder: 'tag (several: separated by commas)'
        });
        const tags = (answer.value ?? '')
          .split(',')
          .map(t => t.trim())
          .filter(Boolean);
        if (!answer.button.accept || !tags.length) return;
        await patchRun(view, dir, run, { add_tags: tags });
      },
      removeTag: (view, dir, run, tag) => patchRun(view, dir, run, { remove_tags: [tag] }),
      openInTab: (state: DetailState) => {
        const view = new DetailView(api, { ...host, openInTab: undefined });
        const widget = new MainAreaWidget({ content: view });
        widget.id = `arrakis-detail-${++tabs}`;
        widget.addClass('arrakis-tab');
        widget.title.icon = experimentsIcon;
        widget.title.closable = true;
        widget.title.label =
          state.mode === 'compare'
            ? `${state.name}: diff`
            : state.mode === 'version'
              ? `${state.name} ${state.ref.slice(0, 8)}`
              : 'Experiment';
        app.shell.add(widget, 'main');
        void view.restore(state).then(() => {
          if (view.version) widget.title.label = `${view.version.name} v${view.version.v}`;
          if (view.diff) widget.title.label = `${view.diff.name} v${view.diff.a.v} ↔ v${view.diff.b.v}`;
        });
      }
    };

    const panel = new ExperimentsPanel({ api, host });
    panel.title.icon = experimentsIcon;
    panel.title.caption = 'Experiments';
    app.shell.add(panel, 'left', { rank: 650 });
    if (restorer) restorer.add(panel, 'arrakis-experiments');

    // ---- the store follows the active notebook ----
    const followNotebook = (): void => {
      void panel.setDir(notebookDir(app, tracker.currentWidget));
    };
    tracker.currentChanged.connect((_, nb) => {
      followNotebook();
      nb?.context.pathChanged.connect(() => {
        if (tracker.currentWidget === nb) followNotebook();
      });
      app.commands.notifyCommandChanged();
    });
    followNotebook();

    // ---- refresh: after executions (debounced), on a timer, on demand ----
    let debounce = 0;
    NotebookActions.executed.connect(() => {
      window.clearTimeout(debounce);
      debounce = window.setTimeout(() => panel.invalidate(), 300);
    });
    let timer = 0;
    const setRefreshInterval = (ms: number): void => {
      window.clearInterval(timer);
      timer = 0;
      if (ms > 0) {
        timer = window.setInterval(() => {
          if (panel.isVisible && !document.hidden) void panel.refresh();
        }, Math.max(1000, ms));
      }
    };
    setRefreshInterval(10_000);
    if (settingRegistry) {
      void settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          const apply = (): void => {
            setRefreshInterval(Number(settings.get('refreshInterval').composite ?? 10_000));
            panel.setPageSize(Number(settings.get('pageSize').composite ?? 50));
          };
          apply();
          settings.changed.connect(apply);
        })
        .catch(err => console.warn('arrakis-jupyter: cannot load the settings', err));
    }

    // ---- commands ----
    const { commands } = app;
    const show = (): void => {
      if (!panel.isAttached) app.shell.add(panel, 'left', { rank: 650 });
      app.shell.activateById(panel.id);
    };
    panel.changed.connect(() => commands.notifyCommandChanged());

    commands.addCommand(CommandIDs.open, {
      label: 'Show Experiments',
      caption: 'Show the Experiments sidebar (versions and runs recorded with %%arrakis)',
      icon: experimentsIcon,
      execute: async () => {
        show();
        await panel.ready();
      }
    });
    commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh Experiments',
      caption: 'Re-read the experiment store of the active notebook',
      execute: () => panel.refresh()
    });
    commands.addCommand(CommandIDs.compare, {
      label: args => (args.name ? `Compare ${args.name} ${args.a} and ${args.b}` : 'Compare Selected Versions'),
      caption: 'Diff the sources, results and metrics of the two ticked versions',
      isEnabled: args => panel.canCompare || !!(str(args, 'name') && str(args, 'a') && str(args, 'b')),
      execute: async args => {
        show();
        const name = str(args, 'name');
        const a = str(args, 'a');
        const b = str(args, 'b');
        if (name && a && b) await panel.compare(name, a, b);
        else await panel.compare();
      }
    });
    commands.addCommand(CommandIDs.insert, {
      label: 'Insert Version into Notebook',
      caption: "Insert the selected version's source in a new cell below the active cell",
      isEnabled: args => !!tracker.currentWidget && !!(str(args, 'name') || panel.currentVersion),
      execute: async args => {
        const name = str(args, 'name');
        const ref = str(args, 'ref');
        const target = name && ref ? { name, hash: ref } : panel.currentVersion;
        if (target) await panel.insert(target.name, target.hash);
      }
    });
    commands.addCommand(CommandIDs.remove, {
      label: 'Delete Version…',
      caption: 'Delete the selected version and its runs from the store',
      isEnabled: args => !!(str(args, 'name') || panel.currentVersion),
      execute: async args => {
        const name = str(args, 'name');
        const ref = str(args, 'ref');
        let target = panel.currentVersion;
        if (name && ref) {
          try {
            const v = await api.version(panel.dir, name, ref);
            target = { name, hash: v.hash, v: v.v };
          } catch (err) {
            await showErrorMessage('Delete version', (err as Error).message);
            return;
          }
        }
        if (target) await host.deleteVersion(panel.detail, panel.dir, target.name, target.hash, target.v);
      }
    });
    commands.addCommand(CommandIDs.note, {
      label: 'Edit Note of Selected Run…',
      isEnabled: () => !!panel.detail.run,
      execute: async () => {
        const run = panel.detail.run;
        if (run) await host.editNote(panel.detail, panel.dir, run);
      }
    });
    commands.addCommand(CommandIDs.tag, {
      label: 'Tag Selected Run…',
      isEnabled: () => !!panel.detail.run,
      execute: async () => {
        const run = panel.detail.run;
        if (run) await host.addTag(panel.detail, panel.dir, run);
      }
    });
    if (palette) {
      for (const command of Object.values(CommandIDs)) palette.addItem({ command, category: CATEGORY });
    }
    if (labShell) {
      labShell.currentChanged.connect(() => commands.notifyCommandChanged());
    }
  }
};

export default plugin;

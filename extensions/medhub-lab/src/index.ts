/**
 * medhub's side panel in JupyterLab: the datasets this server's user may read (a personal grant
 * with the time it has left), a button that opens one in the active notebook, and the user's
 * access requests, batch jobs and exports. Everything comes from this server's own REST API
 * (the medhub_jupyter server extension), which asks the hub's services with the server's token.
 */
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { URLExt } from '@jupyterlab/coreutils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

const ICON = new LabIcon({
  name: 'medhub:datasets',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">' +
    '<ellipse cx="12" cy="5" rx="8" ry="3"/><path d="M4 7v4c0 1.7 3.6 3 8 3s8-1.3 8-3V7c0 1.7-3.6 3-8 3S4 8.7 4 7z"/>' +
    '<path d="M4 13v4c0 1.7 3.6 3 8 3s8-1.3 8-3v-4c0 1.7-3.6 3-8 3s-8-1.3-8-3z"/></g></svg>'
});

interface IDataset {
  id: string;
  title: string;
  sensitivity: string;
  expires: string | null;
  left: string | null;
}

interface IRow {
  [key: string]: unknown;
}

/** GET a path of this server's API (under its base URL); its JSON, or an error naming it. */
async function get(...path: string[]): Promise<IRow> {
  const settings = ServerConnection.makeSettings();
  const response = await ServerConnection.makeRequest(URLExt.join(settings.baseUrl, ...path), {}, settings);
  const body = await response.json();
  if (!response.ok) {
    throw new Error(String(body.message || response.statusText));
  }
  return body;
}

function element(tag: string, text = '', className = ''): HTMLElement {
  const node = document.createElement(tag);
  node.textContent = text;
  if (className) {
    node.className = className;
  }
  return node;
}

/** The code that opens ``id`` (what the button puts in the notebook). */
export function openLine(id: string): string {
  return `import medlib.datasets\ntree = medlib.datasets.open(${JSON.stringify(id)})`;
}

class MedhubPanel extends Widget {
  constructor(private tracker: INotebookTracker) {
    super();
    this.id = 'medhub-panel';
    this.title.icon = ICON;
    this.title.caption = 'medhub: my datasets, requests, jobs and exports';
    this.addClass('medhub-panel');
  }

  /** Read again whenever the panel is shown: grants end and requests are decided meanwhile. */
  protected onAfterShow(): void {
    void this.refresh();
  }

  /** Fill the panel from the server; each section says what went wrong on its own. */
  async refresh(): Promise<void> {
    const root = this.node;
    root.replaceChildren();
    const head = element('div', '', 'medhub-head');
    head.append(element('h2', 'medhub'));
    const again = element('button', 'Refresh', 'jp-Button medhub-refresh');
    again.onclick = () => void this.refresh();
    head.append(again);
    root.append(head);
    this.status = element('p', '', 'medhub-status');
    root.append(this.status);
    await this.section('Datasets I may read', 'medhub-datasets', async list => {
      const body = await get('medlib', 'datasets');
      for (const d of body.datasets as IDataset[]) {
        const item = element('li');
        item.dataset.dataset = d.id;
        item.append(element('b', d.id), element('span', ` ${d.title}`));
        const left = d.expires ? `personal grant: ${d.left} left` : 'your group\'s grant';
        item.append(element('div', `${d.sensitivity}; ${left}`, 'medhub-left'));
        const open = element('button', 'Open in notebook', 'jp-Button medhub-open');
        open.onclick = () => this.insert(d.id);
        item.append(open);
        list.append(item);
      }
      return (body.datasets as IDataset[]).length;
    });
    const access = this.section('My requests', 'medhub-requests', async list => {
      const body = await get('medlib', 'hub', 'requests');
      for (const r of body.requests as IRow[]) {
        list.append(element('li', `${r.dataset}: ${r.state}${r.reason ? ` (${r.reason})` : ''}, until ${String(r.until).slice(0, 10)}`));
      }
      return (body.requests as IRow[]).length;
    });
    const jobs = this.section('Batch jobs', 'medhub-jobs', async list => {
      const body = await get('medlib', 'hub', 'jobs');
      for (const j of body.jobs as IRow[]) {
        list.append(element('li', `${j.name}: ${j.status}`));
      }
      return (body.jobs as IRow[]).length;
    });
    const exports = this.section('My exports', 'medhub-exports', async list => {
      const body = await get('medlib', 'hub', 'exports');
      for (const e of body.exports as IRow[]) {
        list.append(element('li', `${e.name}: ${e.state}`));
      }
      return (body.exports as IRow[]).length;
    });
    await Promise.all([access, jobs, exports]);
  }

  private status: HTMLElement = element('p');

  private async section(title: string, id: string, fill: (list: HTMLElement) => Promise<number>): Promise<void> {
    const part = element('section', '', 'medhub-section');
    part.id = id;
    part.append(element('h3', title));
    const list = element('ul');
    part.append(list);
    this.node.append(part);
    try {
      if ((await fill(list)) === 0) {
        list.append(element('li', 'none', 'medhub-none'));
      }
    } catch (error) {
      list.append(element('li', `cannot be read: ${(error as Error).message}`, 'medhub-error'));
    }
  }

  private insert(id: string): void {
    const notebook = this.tracker.currentWidget;
    if (!notebook) {
      this.status.textContent = 'Open a notebook first: the line goes below its active cell.';
      return;
    }
    NotebookActions.insertBelow(notebook.content);
    notebook.content.activeCell?.model.sharedModel.setSource(openLine(id));
    this.status.textContent = `Added a cell that opens ${id} to ${notebook.title.label}.`;
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'medhub-lab:panel',
  description: 'medhub: my datasets, requests, batch jobs and exports',
  autoStart: true,
  requires: [ILabShell, INotebookTracker],
  activate: (app: JupyterFrontEnd, shell: ILabShell, tracker: INotebookTracker) => {
    const panel = new MedhubPanel(tracker);
    shell.add(panel, 'left', { rank: 200 });
    app.commands.addCommand('medhub:refresh', { label: 'Refresh medhub panel', execute: () => panel.refresh() });
  }
};

export default plugin;

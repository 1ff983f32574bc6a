// Line diffs of two sources (Myers' O(ND) algorithm) laid out side by side, and a renderer for the
// server's unified diff text. Changed lines carry .arrakis-diff-del (left, a) / .arrakis-diff-add
// (right, b); sources keep their syntax highlighting.
import { highlightLines } from './highlight';

export type Op = { kind: 'equal' | 'del' | 'add'; a: number; b: number }; // a/b: line indices (-1: none)

/** The edit script turning `a` into `b`, line by line (shortest, Myers 1986). */
export function diffLines(a: string[], b: string[]): Op[] {
  // intern lines so comparisons are integer compares
  const ids = new Map<string, number>();
  const id = (s: string): number => {
    let v = ids.get(s);
    if (v === undefined) {
      v = ids.size;
      ids.set(s, v);
    }
    return v;
  };
  const A = a.map(id);
  const B = b.map(id);
  // strip the common prefix and suffix: most edits are small
  let start = 0;
  while (start < A.length && start < B.length && A[start] === B[start]) start++;
  let endA = A.length;
  let endB = B.length;
  while (endA > start && endB > start && A[endA - 1] === B[endB - 1]) {
    endA--;
    endB--;
  }
  const middle = myers(A.slice(start, endA), B.slice(start, endB)).map(op => ({
    kind: op.kind,
    a: op.a < 0 ? -1 : op.a + start,
    b: op.b < 0 ? -1 : op.b + start
  }));
  const ops: Op[] = [];
  for (let i = 0; i < start; i++) ops.push({ kind: 'equal', a: i, b: i });
  ops.push(...middle);
  for (let i = 0; i < A.length - endA; i++) ops.push({ kind: 'equal', a: endA + i, b: endB + i });
  return ops;
}

function myers(A: number[], B: number[]): Op[] {
  const n = A.length;
  const m = B.length;
  if (!n) return B.map((_, j) => ({ kind: 'add' as const, a: -1, b: j }));
  if (!m) return A.map((_, i) => ({ kind: 'del' as const, a: i, b: -1 }));
  const max = n + m;
  const offset = max + 1;
  let v = new Int32Array(2 * max + 3);
  const trace: Int32Array[] = [];
  outer: for (let d = 0; d <= max; d++) {
    trace.push(v.slice());
    for (let k = -d; k <= d; k += 2) {
      let x =
        k === -d || (k !== d && v[offset + k - 1] < v[offset + k + 1]) ? v[offset + k + 1] : v[offset + k - 1] + 1;
      let y = x - k;
      while (x < n && y < m && A[x] === B[y]) {
        x++;
        y++;
      }
      v[offset + k] = x;
      if (x >= n && y >= m) {
        trace.push(v.slice());
        break outer;
      }
    }
  }
  // walk back through the trace
  const ops: Op[] = [];
  let x = n;
  let y = m;
  for (let d = trace.length - 2; d >= 0 && (x > 0 || y > 0); d--) {
    v = trace[d];
    const k = x - y;
    const prevK =
      k === -d || (k !== d && v[offset + k - 1] < v[offset + k + 1]) ? k + 1 : k - 1;
    const prevX = d === 0 ? 0 : v[offset + prevK];
    const prevY = d === 0 ? 0 : prevX - prevK;
    while (x > prevX && y > prevY) {
      x--;
      y--;
      ops.push({ kind: 'equal', a: x, b: y });
    }
    if (d > 0) {
      if (x === prevX) {
        y--;
        ops.push({ kind: 'add', a: -1, b: y });
      } else {
        x--;
        ops.push({ kind: 'del', a: x, b: -1 });
      }
    }
  }
  return ops.reverse();
}

export interface Row {
  a: number; // line index in a, -1 for none
  b: number;
  kind: 'equal' | 'change' | 'del' | 'add';
}

/** Side-by-side rows: equal lines face each other, a run of deletions faces the additions after it. */
export function sideBySide(ops: Op[]): Row[] {
  const rows: Row[] = [];
  let i = 0;
  while (i < ops.length) {
    if (ops[i].kind === 'equal') {
      rows.push({ a: ops[i].a, b: ops[i].b, kind: 'equal' });
      i++;
      continue;
    }
    const dels: number[] = [];
    const adds: number[] = [];
    while (i < ops.length && ops[i].kind !== 'equal') {
      if (ops[i].kind === 'del') dels.push(ops[i].a);
      else adds.push(ops[i].b);
      i++;
    }
    for (let j = 0; j < Math.max(dels.length, adds.length); j++) {
      const a = j < dels.length ? dels[j] : -1;
      const b = j < adds.length ? adds[j] : -1;
      rows.push({ a, b, kind: a >= 0 && b >= 0 ? 'change' : a >= 0 ? 'del' : 'add' });
    }
  }
  return rows;
}

function splitLines(source: string): string[] {
  return source === '' ? [] : source.replace(/\r\n?/g, '\n').split('\n');
}

function cell(cls: string, text: string): HTMLElement {
  const td = document.createElement('td');
  td.className = cls;
  td.textContent = text;
  return td;
}

/**
 * A side-by-side diff table (`.arrakis-diff`) of two sources: line numbers and highlighted lines,
 * `.arrakis-diff-del` on a's changed lines, `.arrakis-diff-add` on b's. Runs of more than
 * 2 × `context` unchanged lines are folded into a clickable "⋯ n unchanged lines" row.
 */
export function renderSideBySide(
  a: string,
  b: string,
  labels: [string, string],
  context = 4
): HTMLElement {
  const linesA = splitLines(a);
  const linesB = splitLines(b);
  const hlA = highlightLines(a.replace(/\r\n?/g, '\n'));
  const hlB = highlightLines(b.replace(/\r\n?/g, '\n'));
  const rows = sideBySide(diffLines(linesA, linesB));
  const table = document.createElement('table');
  table.className = 'arrakis-diff arrakis-diff-split';
  const cols = document.createElement('colgroup');
  for (const cls of ['arrakis-col-num', 'arrakis-col-code', 'arrakis-col-num', 'arrakis-col-code']) {
    const col = document.createElement('col');
    col.className = cls;
    cols.appendChild(col);
  }
  table.appendChild(cols);
  const digits = String(Math.max(linesA.length, linesB.length, 1)).length;
  table.style.setProperty('--arrakis-num-width', `${digits + 2}ch`);
  const head = table.createTHead().insertRow();
  for (const [i, label] of labels.entries()) {
    const th = document.createElement('th');
    th.colSpan = 2;
    th.textContent = label;
    th.className = i === 0 ? 'arrakis-diff-head-a' : 'arrakis-diff-head-b';
    head.appendChild(th);
  }
  const body = table.createTBody();
  const makeRow = (row: Row): HTMLTableRowElement => {
    const tr = document.createElement('tr');
    tr.className = `arrakis-diff-row arrakis-diff-${row.kind}`;
    const side = (index: number, hl: HTMLElement[], cls: string, changed: boolean): void => {
      const num = cell('arrakis-diff-num', index >= 0 ? String(index + 1) : '');
      const code = document.createElement('td');
      code.className = 'arrakis-diff-code';
      if (index >= 0) {
        code.appendChild(hl[index] ?? document.createTextNode(''));
        if (changed) {
          code.classList.add(cls);
          num.classList.add(cls);
        }
      } else {
        code.classList.add('arrakis-diff-empty');
      }
      tr.append(num, code);
    };
    side(row.a, hlA, 'arrakis-diff-del', row.kind === 'change' || row.kind === 'del');
    side(row.b, hlB, 'arrakis-diff-add', row.kind === 'change' || row.kind === 'add');
    return tr;
  };
  // fold long unchanged stretches
  let i = 0;
  while (i < rows.length) {
    if (rows[i].kind !== 'equal') {
      body.appendChild(makeRow(rows[i++]));
      continue;
    }
    let j = i;
    while (j < rows.length && rows[j].kind === 'equal') j++;
    const first = i === 0;
    const last = j === rows.length;
    const keepHead = first ? 0 : context;
    const keepTail = last ? 0 : context;
    if (j - i > keepHead + keepTail + 1) {
      for (let r = i; r < i + keepHead; r++) body.appendChild(makeRow(rows[r]));
      const hidden = rows.slice(i + keepHead, j - keepTail);
      const fold = document.createElement('tr');
      fold.className = 'arrakis-diff-fold';
      const td = document.createElement('td');
      td.colSpan = 4;
      const button = document.createElement('button');
      button.className = 'arrakis-link';
      button.textContent = `⋯ ${hidden.length} unchanged line${hidden.length === 1 ? '' : 's'}`;
      button.onclick = () => {
        const frag = document.createDocumentFragment();
        hidden.forEach(r => frag.appendChild(makeRow(r)));
        fold.replaceWith(frag);
      };
      td.appendChild(button);
      fold.appendChild(td);
      body.appendChild(fold);
      for (let r = j - keepTail; r < j; r++) body.appendChild(makeRow(rows[r]));
    } else {
      for (let r = i; r < j; r++) body.appendChild(makeRow(rows[r]));
    }
    i = j;
  }
  if (!rows.some(r => r.kind !== 'equal')) {
    table.classList.add('arrakis-diff-identical');
  }
  return table;
}

/** The server's unified diff text, one coloured line per diff line (`.arrakis-diff.arrakis-diff-unified`). */
export function renderUnified(unified: string): HTMLElement {
  const pre = document.createElement('div');
  pre.className = 'arrakis-diff arrakis-diff-unified';
  for (const line of splitLines(unified.replace(/\n$/, ''))) {
    const div = document.createElement('div');
    div.className = 'arrakis-line';
    if (line.startsWith('+++') || line.startsWith('---')) div.classList.add('arrakis-diff-file');
    else if (line.startsWith('@@')) div.classList.add('arrakis-diff-hunk');
    else if (line.startsWith('+')) div.classList.add('arrakis-diff-add');
    else if (line.startsWith('-')) div.classList.add('arrakis-diff-del');
    div.textContent = line || ' ';
    pre.appendChild(div);
  }
  return pre;
}

// A small Python highlighter for stored experiment sources: keywords, builtins, strings (including
// triple-quoted ones over several lines), comments, numbers, decorators, IPython magics, def/class
// names. Output is DOM (text nodes only, never innerHTML), one element per source line, coloured
// with JupyterLab's editor theme variables (see style/base.css: .arrakis-tok-*).

const KEYWORDS = new Set(
  ('and as assert async await break class continue def del elif else except finally for from global if ' +
    'import in is lambda nonlocal not or pass raise return try while with yield match case type')
    .split(' ')
);
const ATOMS = new Set(['True', 'False', 'None', 'self', 'cls', '__name__', 'Ellipsis', 'NotImplemented']);
const BUILTINS = new Set(
  ('abs all any ascii bin bool breakpoint bytearray bytes callable chr classmethod compile complex delattr ' +
    'dict dir divmod enumerate eval exec filter float format frozenset getattr globals hasattr hash help hex ' +
    'id input int isinstance issubclass iter len list locals map max memoryview min next object oct open ord ' +
    'pow print property range repr reversed round set setattr slice sorted staticmethod str sum super tuple ' +
    'type vars zip Exception ValueError TypeError KeyError IndexError RuntimeError')
    .split(' ')
);

export type TokenType =
  | 'keyword'
  | 'atom'
  | 'builtin'
  | 'string'
  | 'comment'
  | 'number'
  | 'decorator'
  | 'magic'
  | 'def'
  | 'operator'
  | 'text';

export interface Token {
  type: TokenType;
  text: string;
}

// Alternatives tried in order at each position (sticky regexes).
const STRING_PREFIX = '(?:[rRbBuUfF]{1,2})?';
const RULES: [TokenType, RegExp][] = [
  ['comment', /#[^\n]*/y],
  ['string', new RegExp(`${STRING_PREFIX}(?:"""[\\s\\S]*?(?:"""|$(?![\\s\\S]))|'''[\\s\\S]*?(?:'''|$(?![\\s\\S])))`, 'y')],
  ['string', new RegExp(`${STRING_PREFIX}(?:"(?:[^"\\\\\\n]|\\\\.)*"?|'(?:[^'\\\\\\n]|\\\\.)*'?)`, 'y')],
  ['number', /(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d[\d_]*)?[jJ]?)/y],
  ['text', /[A-Za-z_\u00c0-\uffff][\w\u00c0-\uffff]*/y], // identifiers: classified below
  ['operator', /[-+*/%=<>!&|^~:.,;()[\]{}@]+/y],
  ['text', /\s+/y],
  ['text', /./y]
];

/** Tokens of a Python source (magic lines and decorators at line starts are recognised). */
export function tokenize(source: string): Token[] {
  const tokens: Token[] = [];
  let pos = 0;
  let lineStart = true; // only whitespace since the last newline
  let afterDefOrClass = false;
  const push = (type: TokenType, text: string): void => {
    const last = tokens[tokens.length - 1];
    if (last && last.type === type && type === 'text') {
      last.text += text;
    } else {
      tokens.push({ type, text });
    }
  };
  while (pos < source.length) {
    if (lineStart) {
      const m = /[ \t]*(%%?[^\n]*|!\S[^\n]*|@[\w.]+)/y;
      m.lastIndex = pos;
      const hit = m.exec(source);
      if (hit) {
        const indent = hit[0].length - hit[1].length;
        if (indent) push('text', hit[0].slice(0, indent));
        push(hit[1][0] === '@' ? 'decorator' : 'magic', hit[1]);
        pos += hit[0].length;
        lineStart = false;
        continue;
      }
    }
    let matched = false;
    for (const [type, re] of RULES) {
      re.lastIndex = pos;
      const hit = re.exec(source);
      if (!hit || !hit[0]) continue;
      const text = hit[0];
      let kind: TokenType = type;
      if (type === 'text' && /^[A-Za-z_\u00c0-\uffff]/.test(text)) {
        if (afterDefOrClass) {
          kind = 'def';
          afterDefOrClass = false;
        } else if (KEYWORDS.has(text)) {
          kind = 'keyword';
          afterDefOrClass = text === 'def' || text === 'class';
        } else if (ATOMS.has(text)) {
          kind = 'atom';
        } else if (BUILTINS.has(text) && source[pos + text.length] === '(') {
          kind = 'builtin';
        }
      } else if (type !== 'text' || /\S/.test(text)) {
        afterDefOrClass = afterDefOrClass && type === 'text';
      }
      push(kind, text);
      pos += text.length;
      if (text.includes('\n')) {
        lineStart = /\n[ \t]*$/.test(text);
      } else if (/\S/.test(text)) {
        lineStart = false;
      }
      matched = true;
      break;
    }
    if (!matched) {
      push('text', source[pos]);
      pos += 1;
    }
  }
  return tokens;
}

/** One element per line of `source` (a `<div class="arrakis-line">`), tokens as coloured spans. */
export function highlightLines(source: string): HTMLElement[] {
  const lines: HTMLElement[] = [];
  let line = newLine();
  lines.push(line);
  for (const token of tokenize(source)) {
    const parts = token.text.split('\n');
    parts.forEach((part, i) => {
      if (i > 0) {
        line = newLine();
        lines.push(line);
      }
      if (!part) return;
      if (token.type === 'text') {
        line.appendChild(document.createTextNode(part));
      } else {
        const span = document.createElement('span');
        span.className = `arrakis-tok-${token.type}`;
        span.textContent = part;
        line.appendChild(span);
      }
    });
  }
  return lines;
}

function newLine(): HTMLElement {
  const div = document.createElement('div');
  div.className = 'arrakis-line';
  return div;
}

/** A highlighted, line-numbered source block (`.arrakis-source`). */
export function renderSource(source: string): HTMLElement {
  const pre = document.createElement('div');
  pre.className = 'arrakis-source';
  pre.setAttribute('role', 'code');
  highlightLines(source).forEach((line, i) => {
    line.dataset.line = String(i + 1);
    pre.appendChild(line);
  });
  return pre;
}

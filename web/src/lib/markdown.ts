/**
 * Markdown for answers that are still arriving: rendered on every token, so whatever the
 * text ends with (half a code fence, half a list, a lone `**`) must render sanely, and
 * nothing in it may ever run script.
 *
 * - Raw HTML in an answer is shown as text, not interpreted (a model quoting `<script>`
 *   means the words), and the whole output goes through DOMPurify as well.
 * - An unclosed code fence is closed for the render, so the code shows as code while it
 *   streams instead of the rest of the answer flipping between code and prose.
 * - Code is highlighted (highlight.js core with a few languages) and gets a copy button.
 */
import DOMPurify from 'dompurify';
import hljs from 'highlight.js/lib/core';
import bash from 'highlight.js/lib/languages/bash';
import css from 'highlight.js/lib/languages/css';
import go from 'highlight.js/lib/languages/go';
import javascript from 'highlight.js/lib/languages/javascript';
import json from 'highlight.js/lib/languages/json';
import python from 'highlight.js/lib/languages/python';
import rust from 'highlight.js/lib/languages/rust';
import sql from 'highlight.js/lib/languages/sql';
import typescript from 'highlight.js/lib/languages/typescript';
import xml from 'highlight.js/lib/languages/xml';
import yaml from 'highlight.js/lib/languages/yaml';
import { Marked } from 'marked';

hljs.registerLanguage('bash', bash);
hljs.registerLanguage('css', css);
hljs.registerLanguage('go', go);
hljs.registerLanguage('javascript', javascript);
hljs.registerLanguage('json', json);
hljs.registerLanguage('python', python);
hljs.registerLanguage('rust', rust);
hljs.registerLanguage('sql', sql);
hljs.registerLanguage('typescript', typescript);
hljs.registerLanguage('xml', xml);
hljs.registerLanguage('yaml', yaml);

/** Escapes text for HTML. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/**
 * Closes a code fence left open at the end of `source` (CommonMark: a line of 3+ backticks
 * or tildes opens one, a line of at least as many of the same closes it).
 */
export function closeOpenFence(source: string): string {
  let open: { char: string; length: number } | null = null;
  for (const line of source.split('\n')) {
    const match = /^ {0,3}(`{3,}|~{3,})(.*)$/.exec(line);
    if (!match) continue;
    const fence = match[1];
    if (open === null) {
      // A backtick fence's info string may not contain a backtick.
      if (fence[0] === '`' && match[2].includes('`')) continue;
      open = { char: fence[0], length: fence.length };
    } else if (fence[0] === open.char && fence.length >= open.length && match[2].trim() === '') {
      open = null;
    }
  }
  if (open === null) return source;
  return `${source}${source.endsWith('\n') ? '' : '\n'}${open.char.repeat(open.length)}`;
}

const marked = new Marked({
  gfm: true,
  breaks: false,
  renderer: {
    html({ text }) {
      return escapeHtml(text);
    },
    code({ text, lang }) {
      const language = (lang ?? '').trim().split(/\s+/)[0].toLowerCase();
      const known = language !== '' && hljs.getLanguage(language) !== undefined;
      const body = known ? hljs.highlight(text, { language, ignoreIllegals: true }).value : escapeHtml(text);
      const label = escapeHtml(language || 'text');
      return (
        `<div class="code-block"><div class="code-head"><span class="code-lang">${label}</span>` +
        `<button type="button" class="copy-code" data-copy-code="">Copy</button></div>` +
        `<pre><code class="hljs${known ? ` language-${label}` : ''}">${body}</code></pre></div>`
      );
    },
  },
});

let hooked = false;

function sanitize(html: string): string {
  if (!hooked) {
    hooked = true;
    DOMPurify.addHook('afterSanitizeAttributes', (node) => {
      if (node.tagName === 'A' && node.getAttribute('href')) {
        node.setAttribute('target', '_blank');
        node.setAttribute('rel', 'noopener noreferrer nofollow');
      }
    });
  }
  return DOMPurify.sanitize(html, { USE_PROFILES: { html: true }, FORBID_TAGS: ['style', 'form', 'input'] });
}

/** Markdown to safe HTML, for text that may stop anywhere. */
export function renderMarkdown(source: string): string {
  const html = marked.parse(closeOpenFence(source), { async: false }) as string;
  return sanitize(html);
}

/**
 * Copies the code of a clicked copy button (event delegation: give this every click in the
 * rendered answer). Returns whether the click was on a copy button.
 */
export function handleCopyClick(event: { target: EventTarget | null }): boolean {
  const target = event.target as HTMLElement | null;
  const button = target?.closest?.('button[data-copy-code]') as HTMLButtonElement | null;
  if (!button) return false;
  const code = button.closest('.code-block')?.querySelector('code')?.textContent ?? '';
  void copyText(code).then((ok) => {
    button.textContent = ok ? 'Copied' : 'Copy failed';
    setTimeout(() => {
      button.textContent = 'Copy';
    }, 1500);
  });
  return true;
}

/** Puts text on the clipboard (with a fallback where the async API is unavailable). */
export async function copyText(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = document.createElement('textarea');
    area.value = text;
    area.setAttribute('readonly', '');
    area.style.position = 'fixed';
    area.style.opacity = '0';
    document.body.appendChild(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand('copy');
    } catch {
      ok = false;
    }
    area.remove();
    return ok;
  }
}

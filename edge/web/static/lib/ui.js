// Small DOM helpers of the page.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

export const ms = (value) => `${value.toFixed(2)} ms`;

// A horizontal bar chart of [[label, p], ...] (p in 0..1).
export function barChart(rows) {
  return el('div', {class: 'bars', id: 'bars'}, ...rows.map(([label, p]) =>
    el('div', {class: 'bar-row'},
       el('span', {class: 'bar-label', text: label}),
       el('span', {class: 'bar-track'},
          el('span', {class: 'bar', style: `display:block;width:${(100 * p).toFixed(1)}%`})),
       el('span', {class: 'num', text: p.toFixed(4)}))));
}

// Runs `fn` on click, showing its error in the task's error line instead of the console.
export function guarded(fn, errorLine) {
  return async (...args) => {
    errorLine.textContent = '';
    try {
      await fn(...args);
    } catch (e) {
      errorLine.textContent = `Error: ${e.message ?? e}`;
    }
  };
}

// A fake anywidget model and a mount() for the browser tests (tests/test_widgets_frontend.py).
// Binary values travel from Python as {"__b64__": "..."} and reach the widget as DataView, like anywidget's.

function decode(v) {
  if (v && typeof v === "object" && "__b64__" in v) {
    const bin = atob(v.__b64__), bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new DataView(bytes.buffer);
  }
  return v;
}

const same = (a, b) => a === b || (!(a instanceof DataView) && !(b instanceof DataView) && JSON.stringify(a) === JSON.stringify(b));

class FakeModel {
  constructor(state) {
    this.state = {};
    for (const [k, v] of Object.entries(state)) this.state[k] = decode(v);
    this.listeners = {};
    this.sent = [];     // contents of model.send, in order
    this.saves = [];    // the state keys changed since the previous save, per save_changes()
    this.dirty = new Set();
    this.hold = false;  // when true, pattern requests wait for release()
    this.held = [];
  }
  get(name) { return this.state[name]; }
  set(name, value) {
    const old = this.state[name];
    this.state[name] = value;
    this.dirty.add(name);
    if (!same(old, value)) this.emit(`change:${name}`, this, value);
  }
  save_changes() { this.saves.push([...this.dirty]); this.dirty.clear(); }
  on(event, cb) { (this.listeners[event] ??= []).push(cb); }
  off(event, cb) {
    if (!event) this.listeners = {};
    else if (!cb) delete this.listeners[event];
    else this.listeners[event] = (this.listeners[event] ?? []).filter((f) => f !== cb);
  }
  emit(event, ...args) { for (const cb of [...(this.listeners[event] ?? [])]) cb(...args); }
  listenerCount() { return Object.values(this.listeners).reduce((n, l) => n + l.length, 0); }
  send(content, callbacks, buffers) {
    this.sent.push(JSON.parse(JSON.stringify(content)));
    if (content.type === "pattern") (this.hold ? this.held.push(content) : this.reply(content));
  }
  release() { const held = this.held; this.held = []; this.hold = false; held.forEach((c) => this.reply(c)); }
  /** Answers a pattern request with what the Python test's exposed patternFor() returns. */
  async reply({ layer, head }) {
    const r = await window.patternFor(layer, head);
    if (r.error) this.pyMsg({ type: "error", message: r.error, layer, head });
    else this.pyMsg({ type: "pattern", layer, head, n: r.n }, [{ __b64__: r.b64 }]);
  }
  // As if the kernel changed a trait or sent a custom message.
  pySet(name, value) { this.set(name, decode(value)); this.dirty.delete(name); }
  pyMsg(content, buffers = []) { this.emit("msg:custom", content, buffers.map(decode)); }
}

window.harness = {
  async mount(name, state) {
    const mod = await import(`/static/${name}.js`);
    const model = new FakeModel(state);
    const el = document.createElement("div");
    document.getElementById("root").appendChild(el);
    const cleanup = await mod.default.render({ model, el });
    Object.assign(window, { model, el, cleanup });
  },
};

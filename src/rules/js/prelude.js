// The sandbox every JavaScript rule runs in. Evaluated once per QuickJS context (one per thread),
// before any rule, as `(prelude)(emit)`: `emit(text)` is the native function behind `console.*`.
//
// It defines the two globals httpjail adds (`r` and `console`), then freezes everything a rule
// can reach, so that no evaluation can leave anything behind for the next one:
// - every intrinsic reachable from `globalThis`, and the prototypes only reachable through syntax
//   (generators, iterators, async functions ...), is deep-frozen;
// - `globalThis` itself is frozen: no new globals, no reassigned built-ins.
// It returns the function that installs the request of the next evaluation as `r`.
//
// Nothing here may keep state a rule can observe: the only mutable binding, `current`, is
// replaced before each evaluation and is reachable only through the `r` getter.
(function (emit) {
  'use strict';
  const global = globalThis;
  let current;

  // console.log and friends: one line of text per call, like a terminal would show it.
  function show(value) {
    if (typeof value === 'string') {
      return value;
    }
    try {
      if (typeof value === 'object' && value !== null) {
        const json = JSON.stringify(value);
        if (json !== undefined) {
          return json;
        }
      }
      return String(value);
    } catch (_) {
      return '[value that cannot be shown]';
    }
  }
  function write(...values) {
    let text = '';
    for (let i = 0; i < values.length; i++) {
      if (i > 0) {
        text += ' ';
      }
      text += show(values[i]);
    }
    emit(text);
  }
  const console = {
    log: write,
    info: write,
    warn: write,
    error: write,
    debug: write,
    trace: write,
  };
  Object.defineProperty(global, 'console', {
    value: console,
    writable: false,
    enumerable: false,
    configurable: false,
  });
  Object.defineProperty(global, 'r', {
    get: function r() {
      return current;
    },
    enumerable: false,
    configurable: false,
  });

  // Freezing a prototype turns its data properties read-only, and then assigning a property of
  // the same name to an ordinary object (`this.name = 'MyError'` in an Error subclass,
  // `obj.toString = ...`) throws in strict code. For these few properties that rules plausibly
  // assign, an accessor keeps the shared value read-only and gives the assignment its usual
  // meaning: an own property on the receiver.
  const overridable = [
    [Error.prototype, 'name'],
    [Error.prototype, 'message'],
    [Object.prototype, 'toString'],
  ];
  for (const [home, key] of overridable) {
    const value = home[key];
    Object.defineProperty(home, key, {
      get: function () {
        return value;
      },
      set: function (v) {
        if (this === home) {
          throw new TypeError(`Cannot assign to read only property '${key}' of a built-in`);
        }
        Object.defineProperty(this, key, {
          value: v,
          writable: true,
          enumerable: true,
          configurable: true,
        });
      },
      enumerable: false,
      configurable: false,
    });
  }

  // Two accessors of Error write to the context itself, not to an object, so that freezing
  // would not stop them: `Error.prepareStackTrace = f` would keep `f` (and whatever it closes
  // over) for later evaluations. Fixed values instead.
  for (const key of ['stackTraceLimit', 'prepareStackTrace']) {
    Object.defineProperty(Error, key, {
      value: Error[key],
      writable: false,
      enumerable: false,
      configurable: false,
    });
  }

  // Objects a rule can reach without naming a global: prototypes of generators, iterators,
  // async functions and the like. Each probe may fail if the intrinsic is absent.
  const probes = [
    () => function* () {},
    () => (function* () {})(),
    () => async function () {},
    () => async function* () {},
    () => (async function* () {})(),
    () => async () => {},
    () => [][Symbol.iterator](),
    () => ''[Symbol.iterator](),
    () => new Map()[Symbol.iterator](),
    () => new Set()[Symbol.iterator](),
    () => /./[Symbol.matchAll](''),
    () => [].values().map((x) => x),
    () => Iterator.from({ next: () => ({ done: true }) }),
    () => Iterator.concat(),
    () => (function () { return arguments; })(),
    () => Promise.resolve(),
    () => new Error(),
  ];
  const roots = [global];
  for (const probe of probes) {
    try {
      const sample = probe();
      roots.push(Object.getPrototypeOf(sample));
      roots.push(sample);
    } catch (_) {
      // absent in this build: nothing to freeze
    }
  }

  // Deep freeze: every object reachable through own properties (values, getters, setters,
  // symbols included) and prototypes.
  const seen = new Set();
  const todo = roots;
  while (todo.length > 0) {
    const o = todo.pop();
    if ((typeof o !== 'object' && typeof o !== 'function') || o === null || seen.has(o)) {
      continue;
    }
    seen.add(o);
    Object.freeze(o);
    todo.push(Object.getPrototypeOf(o));
    for (const key of Reflect.ownKeys(o)) {
      const d = Reflect.getOwnPropertyDescriptor(o, key);
      if (d === undefined) {
        continue;
      }
      if ('value' in d) {
        todo.push(d.value);
      } else {
        todo.push(d.get, d.set);
      }
    }
  }

  return function (url, method, scheme, host, path, port, requester_ip) {
    current = { url, method, scheme, host, path, port, requester_ip };
  };
})

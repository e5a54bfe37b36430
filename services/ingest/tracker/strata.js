/* Strata browser tracker. Install with one tag:
 *  <script src="https://INGEST/t.js" data-write-key="WRITE_KEY" defer></script>
 * Docs: docs/tracker.md. Ingest serves it minified (comments and blanks removed) at GET /t.js. */
((w, d, nav, loc) => {
  const script = d.currentScript;
  const early = w.strata;
  if (!script || (early && early.v)) return;
  const attr = name => script.getAttribute('data-' + name);
  const key = attr('write-key');
  const api = (attr('api') || new URL(script.src).origin) + '/v1/batch';
  // Do Not Track / Global Privacy Control are honoured when the site's tag asks for it.
  const off = attr('respect-dnt') != null && (nav.doNotTrack == '1' || !!nav.globalPrivacyControl);
  const on = (target, type, listener, options) => target.addEventListener(type, listener, options);
  // Storage may be blocked or full: every access is guarded. Reading is harmless; writing
  // happens only after analytics consent (see consent()).
  const storage = (method, k, v) => { try { return localStorage[method + 'Item']('strata_' + k, v); } catch { /* blocked */ } };
  const get = k => storage('get', k);
  const put = (k, v) => storage('set', k, v);
  const drop = k => storage('remove', k);
  const parse = text => { try { return JSON.parse(text); } catch { /* corrupt */ } };
  let choices = parse(get('consent'));
  let stored = choices && choices.analytics;
  let anonymousId = stored && get('aid');
  let userId = stored && get('uid');
  let queue = (stored && parse(get('q'))) || [];
  let timer = 0, inflight = 0, backoff = 0, errors = 0;
  const rnd = () => Math.random().toString(36).slice(2);
  const id = () => (crypto.randomUUID ? crypto.randomUUID() : Date.now().toString(36) + rnd() + rnd());
  const now = () => new Date().toISOString();
  let referrer = d.referrer;
  let lastUrl = loc.href;
  const pageOf = href => {
    const u = new URL(href);
    return { url: href, path: u.pathname, search: u.search, title: d.title, referrer };
  };

  // -- delivery: batched, retried with backoff, beaconed when the page is hidden -----------------
  const save = () => stored && put('q', JSON.stringify(queue));
  const body = batch => JSON.stringify({ writeKey: key, sentAt: now(), batch,
    context: { library: { name: 'strata.js', version: '1' }, locale: nav.language } });
  const forget = batch => { queue = queue.filter(m => !batch.includes(m)); save(); };
  const flush = () => {
    clearTimeout(timer);
    timer = 0;
    if (inflight || !queue.length) return;
    const batch = queue.slice(0, 50);
    inflight = 1;
    // A string body goes as text/plain: a "simple" request, so no CORS preflight per batch.
    fetch(api, { method: 'POST', body: body(batch), keepalive: true })
      .then(r => {
        // Other 4xx answers will not improve with retries: the batch is dropped.
        if (r.status > 499 || r.status == 429) throw r;
        inflight = backoff = 0;
        forget(batch);
        flush();
      })
      .catch(() => {
        inflight = 0;
        backoff = Math.min(backoff * 2 || 1000, 60000);
        timer = setTimeout(flush, backoff);
      });
  };
  const send = (type, fields, page) => {
    if (off) return;
    const message = { type, messageId: id(), originalTimestamp: now(),
      context: { page: page || pageOf(loc.href) }, ...fields };
    if (anonymousId) message.anonymousId = anonymousId;
    if (userId) message.userId = userId;
    if (choices) message.context.consent = { categoryPreferences: choices };
    queue.push(message);
    // Bounded: after a long time offline the oldest events give way.
    if (queue.length > 200) queue.shift();
    save();
    if (queue.length > 19) flush();
    else if (!timer && !inflight) timer = setTimeout(flush, 1000);
  };
  const track = (event, properties) => send('track', { event, properties: properties || {} });

  // -- engagement, scroll depth and web vitals: non-interactive events at page leave -------------
  let engagedMs = 0, depth = 0, vitalsSent = 0, cls = 0, burst = 0, burstEnd = 0, burstStart = 0;
  let visibleSince = d.visibilityState == 'visible' ? Date.now() : 0;
  const vitals = {};
  const loadPage = pageOf(lastUrl);
  const scrolled = () => {
    const seen = Math.round(100 * Math.min(1, (w.scrollY + w.innerHeight) /
      d.documentElement.scrollHeight));
    if (seen > depth) depth = seen;
  };
  const leave = page => {
    if (visibleSince) engagedMs += Date.now() - visibleSince;
    visibleSince = d.visibilityState == 'visible' ? Date.now() : 0;
    scrolled();
    if (engagedMs) {
      send('track', { event: '$page_leave', properties: { engaged_ms: engagedMs,
        scroll_depth: depth, $non_interactive: true } }, page);
    }
    engagedMs = depth = 0;
  };
  const observe = (type, handle, options) => {
    try {
      new PerformanceObserver(list => list.getEntries().forEach(handle))
        .observe({ type, buffered: true, ...options });
      return 1;
    } catch { /* not supported by this browser */ }
  };
  observe('paint', e => { if (e.name == 'first-contentful-paint') vitals.fcp = e.startTime; });
  observe('largest-contentful-paint', e => { vitals.lcp = e.startTime; });
  // CLS: the largest burst of shifts (gaps under 1 s, at most 5 s long), as web-vitals counts it.
  if (observe('layout-shift', e => {
    if (e.hadRecentInput) return;
    if (e.startTime - burstEnd > 1000 || e.startTime - burstStart > 5000) {
      burst = 0;
      burstStart = e.startTime;
    }
    burst += e.value;
    burstEnd = e.startTime;
    vitals.cls = cls = Math.max(cls, burst);
  })) vitals.cls = 0;
  // INP: the slowest interaction on the page (a fair estimate of its 98th percentile).
  observe('event', e => {
    if (e.interactionId) vitals.inp = Math.max(vitals.inp || 0, e.duration);
  }, { durationThreshold: 16 });
  const sendVitals = () => {
    if (vitalsSent) return;
    vitalsSent = 1;
    const timing = performance.getEntriesByType('navigation')[0];
    if (timing && timing.responseStart > 0) vitals.ttfb = timing.responseStart;
    const properties = { $non_interactive: true };
    for (const k in vitals) properties[k] = k == 'cls' ? +vitals.cls.toFixed(4) : Math.round(vitals[k]);
    send('track', { event: '$web_vitals', properties }, loadPage);
  };
  const hidden = () => {
    leave();
    sendVitals();
    const batch = queue.slice(0, 50);
    if (batch.length && nav.sendBeacon && nav.sendBeacon(api, body(batch))) forget(batch);
  };
  on(d, 'visibilitychange', () => {
    if (d.visibilityState == 'hidden') hidden();
    else visibleSince = Date.now();
  });
  on(w, 'pagehide', hidden);
  on(w, 'scroll', scrolled, { passive: true });
  on(w, 'online', flush);

  // -- page views, including single-page-app navigation ------------------------------------------
  const page = (name, properties) =>
    send('page', { properties: properties || {}, ...(typeof name == 'string' && { name }) });
  const navigated = () => {
    if (loc.href == lastUrl) return;
    leave(pageOf(lastUrl));
    referrer = lastUrl;
    lastUrl = loc.href;
    page();
  };
  for (const method of ['pushState', 'replaceState']) {
    const original = history[method];
    history[method] = function () {
      const result = original.apply(this, arguments);
      navigated();
      return result;
    };
  }
  on(w, 'popstate', navigated);
  on(w, 'hashchange', navigated);

  // -- clicks, outbound links, form submits, errors ----------------------------------------------
  const autocapture = attr('autocapture') != null;
  const props = el => {
    const found = {};
    for (const a of el.attributes) {
      if (a.name.startsWith('data-analytics-')) found[a.name.slice(15).replace(/-/g, '_')] = a.value;
    }
    return found;
  };
  const text = el => (el.innerText || el.value || '').trim().slice(0, 100);
  // The clicked element and its ancestors, root first: "body > form#signup > button.btn.primary"
  // (classes sorted; ids and classes outside [A-Za-z0-9_-] left out), for selector matching.
  const plain = /^[A-Za-z0-9_-]+$/;
  const chain = el => {
    const out = [];
    for (; el && el.tagName && out.length < 8; el = el.parentElement) {
      const classes = [...el.classList].filter(c => plain.test(c)).sort().slice(0, 8);
      out.unshift(el.tagName.toLowerCase() + (plain.test(el.id) ? '#' + el.id : '') +
        classes.map(c => '.' + c).join(''));
    }
    return out.join(' > ');
  };
  on(d, 'click', e => {
    const target = e.target.closest ? e.target : e.target.parentElement;
    if (!target) return;
    const tagged = target.closest('[data-analytics]');
    const link = target.closest('a[href]');
    if (tagged && tagged.tagName != 'FORM') track(tagged.getAttribute('data-analytics'), props(tagged));
    if (link && /^https?:/.test(link.protocol) && link.host != loc.host) {
      track('$outbound_click', { url: link.href, text: text(link) });
    } else if (autocapture && !tagged) {
      const el = target.closest('a,button,input[type=submit],[role=button]');
      if (el) track('$click', { tag: el.tagName.toLowerCase(), text: text(el), id: el.id, href: el.href,
        $elements: chain(el) });
    }
  }, true);
  on(d, 'submit', e => {
    const form = e.target;
    track(form.getAttribute('data-analytics') || '$form_submit', { ...props(form),
      form_id: form.id, action: form.getAttribute('action') });
  }, true);
  // Capped per page, so an error in a loop cannot flood the project.
  const error = (properties, stack) => errors++ < 10 &&
    track('$error', { ...properties, stack: stack && ('' + stack).slice(0, 1000) });
  on(w, 'error', e => error({ message: e.message, source: e.filename, line: e.lineno,
    column: e.colno }, e.error && e.error.stack));
  on(w, 'unhandledrejection', e => {
    const reason = e.reason || {};
    error({ message: '' + (reason.message || reason), kind: 'unhandledrejection' }, reason.stack);
  });

  // -- the public API ----------------------------------------------------------------------------
  const identify = (user, traits) => {
    if (user && typeof user == 'object') [user, traits] = [null, user];
    if (user != null) userId = '' + user;
    if (stored && userId) put('uid', userId);
    send('identify', { traits: traits || {} });
  };
  const reset = () => {
    userId = null;
    anonymousId = stored ? id() : null;
    if (stored) put('aid', anonymousId);
    drop('uid');
  };
  const consent = granted => {
    if (off) return; // opted out by DNT/GPC: nothing is sent, so nothing is worth storing
    granted = granted || {};
    choices = { analytics: !!granted.analytics, marketing: !!granted.marketing,
      personalization: !!granted.personalization };
    stored = choices.analytics;
    if (stored) {
      // Until now the server derived a daily id; from here on the visitor keeps one.
      anonymousId = anonymousId || id();
      put('aid', anonymousId);
      put('consent', JSON.stringify(choices));
      if (userId) put('uid', userId);
      save();
    } else {
      anonymousId = null;
      ['aid', 'uid', 'consent', 'q'].forEach(drop);
    }
  };
  const strata = w.strata = (method, ...args) => strata[method] && strata[method](...args);
  Object.assign(strata, { v: 1, track, page, identify, reset, consent, flush });

  // Calls queued before the script loaded: consent first, so the first page view honours it.
  const calls = Array.from(early || [], c => Array.from(c));
  calls.forEach(c => c[0] == 'consent' && consent(c[1]));
  page();
  calls.forEach(c => c[0] != 'consent' && strata(...c));
  if (queue.length > 1) flush();
})(window, document, navigator, location);

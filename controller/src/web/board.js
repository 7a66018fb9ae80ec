// lockstep board: follows the controller's live feed (Server-Sent Events)
// and fetches the changed part of the page again. It says plainly when the
// feed is stale, disconnected or ended instead of showing old data as
// current. No library: this file is all the script the board runs.
(function () {
  "use strict";
  var body = document.body;
  var feed = document.getElementById("feed");
  var live = document.getElementById("live");
  if (!feed || !live) { return; }
  var lastSeq = Number(body.dataset.seq || 0);
  // The controller's clock minus ours, for "12s ago".
  var skew = Number(body.dataset.now || Date.now()) - Date.now();
  var lastHeard = Date.now();
  var state = "connecting";
  var inflight = false;
  var again = false;

  function show(kind, text) {
    feed.className = "feed " + kind;
    feed.textContent = text;
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString([], { hour12: false });
  }

  function ago(ms) {
    var s = Math.max(0, Math.round((Date.now() + skew - ms) / 1000));
    if (s < 90) { return s + "s ago"; }
    if (s < 5400) { return Math.round(s / 60) + "m ago"; }
    return Math.round(s / 3600) + "h ago";
  }

  function tick() {
    var ages = live.querySelectorAll(".age[data-at]");
    for (var i = 0; i < ages.length; i++) { ages[i].textContent = ago(Number(ages[i].dataset.at)); }
    var times = live.querySelectorAll("time.at[data-at]");
    for (var j = 0; j < times.length; j++) { times[j].textContent = clock(Number(times[j].dataset.at)); }
    if (state === "live" && Date.now() - lastHeard > 6000) {
      show("stale", "\u25B2 STALE: no word from the controller for " + Math.round((Date.now() - lastHeard) / 1000) + "s; this may be old");
    }
  }

  // Someone typing in a form of the live part keeps what they typed.
  function typing() {
    var inputs = live.querySelectorAll("input:not([type=hidden]), select");
    for (var i = 0; i < inputs.length; i++) {
      if (inputs[i] === document.activeElement) { return true; }
      if (inputs[i].type !== "checkbox" && inputs[i].tagName === "INPUT" && inputs[i].value !== "") { return true; }
    }
    return false;
  }

  function refresh() {
    if (state === "ended") { return; }
    if (inflight) { again = true; return; }
    if (typing()) { setTimeout(refresh, 500); return; }
    inflight = true;
    var seq = lastSeq;
    fetch(location.href, { headers: { "x-lockstep-fragment": "1" }, credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { ended("SESSION ENDED: log in again with `lockstep board login`"); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined && state !== "ended") {
          live.innerHTML = html;
          body.dataset.appliedSeq = String(seq);
          body.dataset.applied = String(Date.now());
          tick();
        }
      })
      .catch(function () { show("down", "\u25A0 DISCONNECTED: showing data as of " + clock(lastHeard)); })
      .then(function () {
        inflight = false;
        if (again) { again = false; refresh(); }
      });
  }

  function ended(text) {
    state = "ended";
    show("ended", "\u25A0 " + text);
    live.classList.add("ended");
  }

  var events = new EventSource("/events?after=" + lastSeq);
  events.addEventListener("open", function () {
    state = "live";
    lastHeard = Date.now();
    show("live", "\u25CF LIVE");
    refresh();
  });
  events.addEventListener("audit", function (e) {
    lastSeq = Number(e.lastEventId) || lastSeq;
    lastHeard = Date.now();
    refresh();
  });
  events.addEventListener("gates", function () { lastHeard = Date.now(); refresh(); });
  events.addEventListener("ping", function (e) {
    lastHeard = Date.now();
    skew = Number(e.data) - Date.now();
    if (state === "live") { show("live", "\u25CF LIVE"); }
  });
  events.addEventListener("reload", function () { location.reload(); });
  events.addEventListener("ended", function () {
    events.close();
    ended("SESSION ENDED: log in again with `lockstep board login`");
  });
  events.addEventListener("closing", function () {
    show("down", "\u25A0 DISCONNECTED: the controller is stopping; data as of " + clock(lastHeard));
  });
  events.onerror = function () {
    if (state === "ended") { return; }
    if (events.readyState === EventSource.CLOSED) {
      ended("DISCONNECTED: reload the page to reconnect");
    } else {
      state = "down";
      show("down", "\u25A0 DISCONNECTED: reconnecting; data as of " + clock(lastHeard));
    }
  };

  setInterval(tick, 1000);
  tick();

  var theme = document.getElementById("theme");
  var saved = window.localStorage ? localStorage.getItem("lockstep-theme") : null;
  if (saved) { document.documentElement.dataset.theme = saved; }
  if (theme) {
    theme.addEventListener("click", function () {
      var dark = document.documentElement.dataset.theme === "dark" ||
        (!document.documentElement.dataset.theme && window.matchMedia("(prefers-color-scheme: dark)").matches);
      var next = dark ? "light" : "dark";
      document.documentElement.dataset.theme = next;
      if (window.localStorage) { localStorage.setItem("lockstep-theme", next); }
    });
  }
})();

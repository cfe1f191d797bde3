// laneway UI: live updates and log following, without a framework. Pages work without it.
"use strict";

const live = document.getElementById("live-state");

function say(text) {
  if (live) live.textContent = text;
}

// Every element with data-live="URL" is re-rendered from URL when the server says something
// changed; an element the user is typing in is left alone until they are done.
async function refresh() {
  for (const el of document.querySelectorAll("[data-live]")) {
    if (el.contains(document.activeElement) && document.activeElement.matches("input, select, textarea")) continue;
    try {
      const resp = await fetch(el.dataset.live, { credentials: "same-origin", cache: "no-store" });
      if (resp.status === 401) { window.location.reload(); return; }
      if (!resp.ok) continue;
      const html = await resp.text();
      if (html === el.innerHTML) continue;
      // Keep the keyboard's place: the focused link or button, found again by its target.
      const active = el.contains(document.activeElement) ? document.activeElement : null;
      const key = active && (active.getAttribute("href") || active.dataset.focusKey);
      el.innerHTML = html;
      if (key) {
        const again = [...el.querySelectorAll("[href], [data-focus-key]")]
          .find((node) => (node.getAttribute("href") || node.dataset.focusKey) === key);
        if (again) again.focus();
      }
    } catch (err) {
      say("offline");
    }
  }
}

function watch() {
  if (!document.querySelector("[data-live]") || !window.EventSource) return;
  const events = new EventSource(document.body.dataset.root + "/events");
  events.addEventListener("open", () => say("live"));
  events.addEventListener("change", () => { say("live · updated " + new Date().toLocaleTimeString()); refresh(); });
  events.addEventListener("signedout", () => { events.close(); window.location.reload(); });
  events.addEventListener("error", () => say("reconnecting…"));
}

// Logs: "Follow" streams new lines into the page.
function follow() {
  const box = document.getElementById("log-follow");
  const out = document.getElementById("log-lines");
  if (!box || !out) return;
  let stream = null;
  box.addEventListener("change", () => {
    if (stream) { stream.close(); stream = null; say(""); }
    if (!box.checked) return;
    stream = new EventSource(box.dataset.follow);
    stream.addEventListener("open", () => say("following"));
    stream.addEventListener("message", (event) => {
      const atEnd = out.scrollTop + out.clientHeight >= out.scrollHeight - 8;
      out.append(event.data + "\n");
      if (atEnd) out.scrollTop = out.scrollHeight;
    });
    stream.addEventListener("failed", () => { stream.close(); say("cannot follow these logs"); });
  });
}

// Forms that destroy something ask first.
function confirmations() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}

// A form sent back with problems: take the reader to them.
function showErrors() {
  const alert = document.querySelector("[role=alert][tabindex]");
  if (alert) { alert.scrollIntoView({ block: "center" }); alert.focus(); }
}

watch();
follow();
confirmations();
showErrors();

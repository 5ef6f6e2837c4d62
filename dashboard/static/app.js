// listseg dashboard: a little progressive enhancement. Every page works without it.
"use strict";

// A fragment marked data-refresh is fetched again every second and swapped in, until the server
// renders it without data-refresh (nothing is processing any more).
function refresh(el) {
  setTimeout(async () => {
    try {
      const resp = await fetch(el.dataset.refresh, {credentials: "same-origin"});
      if (resp.status === 401) { location.reload(); return; }
      if (!resp.ok) { refresh(el); return; }
      const tpl = document.createElement("template");
      tpl.innerHTML = (await resp.text()).trim();
      const fresh = tpl.content.firstElementChild;
      el.replaceWith(fresh);
      if (fresh.dataset.refresh) { refresh(fresh); }
      else {
        const status = document.getElementById("status");
        if (status) status.textContent = "All uploads are processed.";
      }
    } catch (e) { refresh(el); }
  }, 1000);
}

// A page marked data-reload-when-done reloads itself once its JSON status says busy: false.
function reloadWhenDone(el) {
  setTimeout(async () => {
    try {
      const resp = await fetch(el.dataset.reloadWhenDone, {credentials: "same-origin"});
      if (resp.ok && !(await resp.json()).busy) { location.reload(); return; }
    } catch (e) { /* try again */ }
    reloadWhenDone(el);
  }, 1000);
}

// The upload form: refuse a file over the limit before sending it, name the segment after the file.
function uploadForm(form) {
  const file = form.querySelector("#file"), error = form.querySelector("#file-error");
  const name = form.querySelector("#name"), save = form.querySelector("#save");
  const max = Number(file.dataset.maxBytes);
  const check = () => {
    const f = file.files[0];
    const tooBig = f && f.size > max;
    error.hidden = !tooBig;
    error.textContent = tooBig ? `${f.name} is ${(f.size / 1048576).toFixed(1)} MB: the dashboard takes files up to ${max / 1048576} MB. ` +
      "Split it, or upload it with the API or `listseg upload` (up to 5 GB)." : "";
    return !tooBig;
  };
  file.addEventListener("change", () => {
    if (check() && name && !name.value && file.files[0]) name.value = file.files[0].name.replace(/\.(csv|txt)$/i, "");
  });
  form.addEventListener("submit", (ev) => {
    if (!check()) { ev.preventDefault(); file.focus(); return; }
    save.disabled = true;
    save.textContent = "Uploading…";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(refresh);
  document.querySelectorAll("[data-reload-when-done]").forEach(reloadWhenDone);
  const form = document.getElementById("upload-form");
  if (form) uploadForm(form);
});

// Back from a submitted form (the page restored from the cache): the Save button works again.
window.addEventListener("pageshow", () => {
  const save = document.getElementById("save");
  if (save) { save.disabled = false; save.textContent = "Save"; }
});

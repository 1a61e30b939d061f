// Live lease countdowns: every <time class="countdown" datetime="ISO"> shows the time
// left, and turns into a warning in the last 15 minutes.
(function () {
  const WARN_MS = 15 * 60 * 1000;
  function fmt(ms) {
    if (ms <= 0) return "expired";
    const s = Math.floor(ms / 1000), d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600),
      m = Math.floor(s % 3600 / 60), sec = s % 60;
    if (d) return `${d}d ${h}h left`;
    if (h) return `${h}h ${String(m).padStart(2, "0")}m left`;
    return `${m}m ${String(sec).padStart(2, "0")}s left`;
  }
  function tick() {
    document.querySelectorAll("time.countdown").forEach((el) => {
      const left = new Date(el.getAttribute("datetime")) - Date.now();
      el.textContent = fmt(left);
      el.classList.toggle("expiring", left < WARN_MS);
    });
  }
  document.addEventListener("DOMContentLoaded", () => { tick(); setInterval(tick, 1000); });
  document.addEventListener("htmx:afterSwap", tick);
})();

// Destructive actions ask first, in a styled <dialog>: a form with data-confirm="question"
// (data-confirm-label names the button), or an htmx element with hx-confirm.
(function () {
  let dialog;
  function ask(question, label, onYes) {
    // A boosted swap replaces the body, and a dialog made on the page before goes with it.
    if (!dialog || !dialog.isConnected) {
      dialog = document.createElement("dialog");
      dialog.id = "confirm-dialog";
      dialog.setAttribute("aria-labelledby", "confirm-question");
      dialog.innerHTML = '<form method="dialog"><p id="confirm-question"></p><div class="actions">' +
        '<button value="cancel" type="submit">Cancel</button>' +
        '<button value="yes" type="submit" class="danger" id="confirm-yes"></button></div></form>';
      document.body.appendChild(dialog);
    }
    dialog.querySelector("#confirm-question").textContent = question;
    dialog.querySelector("#confirm-yes").textContent = label || "Confirm";
    dialog.returnValue = "";
    dialog.onclose = () => { if (dialog.returnValue === "yes") onYes(); };
    dialog.showModal();
    // Cancel has the focus: Enter on a dialog opened by mistake destroys nothing.
    dialog.querySelector('button[value="cancel"]').focus();
  }
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!form.dataset || !form.dataset.confirm) return;
    if (form.dataset.confirmed) { delete form.dataset.confirmed; return; }
    event.preventDefault();
    const submitter = event.submitter;
    ask(form.dataset.confirm, form.dataset.confirmLabel, () => {
      form.dataset.confirmed = "1";
      form.requestSubmit(submitter && submitter.form === form ? submitter : undefined);
    });
  }, true);
  document.addEventListener("htmx:confirm", (event) => {
    if (!event.detail.question) return;
    event.preventDefault();
    const el = event.detail.elt;
    ask(event.detail.question, el.dataset && el.dataset.confirmLabel, () => event.detail.issueRequest(true));
  });
})();

// Copy buttons: data-copy="#selector" copies that element's text and says so on the button.
document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  if (!source) return;
  const label = button.dataset.label || button.textContent;
  button.dataset.label = label;
  const done = (text) => { button.textContent = text; setTimeout(() => { button.textContent = label; }, 1500); };
  if (navigator.clipboard) {
    navigator.clipboard.writeText(source.textContent.trim()).then(() => done("Copied"), () => done("Copy failed"));
  } else {
    done("Copy failed");
  }
});

// A boosted form (home's Check out) swaps the next page into this one. It behaves as a page
// load would: an error page (403, 409, 503) is shown rather than dropped as htmx does by
// default, and the keyboard focus moves to the new page's heading, which a screen reader reads.
document.addEventListener("htmx:beforeSwap", (event) => {
  if (event.detail.boosted && event.detail.xhr.status >= 400) {
    event.detail.shouldSwap = true;
    event.detail.isError = false;
  }
});
document.addEventListener("htmx:afterSettle", (event) => {
  if (!event.detail.boosted) return;
  const heading = document.querySelector("main h1");
  if (!heading) return;
  heading.tabIndex = -1;
  heading.focus({ preventScroll: true });
});

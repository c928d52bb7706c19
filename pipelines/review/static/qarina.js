// Qarina review pages: the only script they run. A picture is a blurred thumbnail made on the
// server; its clear version is fetched only when the reviewer asks, by selecting it. Selecting
// it again, or pressing Escape, puts every clear picture back to blurred. No inline handlers
// anywhere, so the pages work under a Content-Security-Policy of default-src 'self'.
"use strict";

function show(button, clear) {
  const image = button.querySelector("img");
  image.src = clear ? button.dataset.clear : button.dataset.blurred;
  image.alt = image.alt.replace(/, (clear|blurred)$/, clear ? ", clear" : ", blurred");
  button.setAttribute("aria-pressed", String(clear));
  button.title = clear ? "Blur again" : "Show clearly";
  button.classList.toggle("clear", clear);
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.reveal");
  if (button) {
    show(button, button.getAttribute("aria-pressed") !== "true");
  }
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    document.querySelectorAll("button.reveal[aria-pressed='true']").forEach((button) => {
      show(button, false);
    });
  }
});

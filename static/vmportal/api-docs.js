// Swagger UI for /api/docs/, from django-ninja's own copy of the bundle (no CDN). The schema is
// read with the page's session; "Try it out" calls go out with the token given to Authorize,
// since the API never accepts the session cookie (apps/api/auth.py).
document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("swagger-ui");
  if (!root || !window.SwaggerUIBundle) return;
  // Swagger UI renders its copy buttons as empty <button>s: name them for screen readers,
  // whenever it (re)renders them.
  const nameButtons = () => {
    for (const button of root.querySelectorAll(".copy-to-clipboard button:not([aria-label])")) {
      button.setAttribute("aria-label", "Copy to clipboard");
    }
  };
  new MutationObserver(nameButtons).observe(root, { childList: true, subtree: true });
  window.SwaggerUIBundle({
    url: root.dataset.schemaUrl,
    domNode: root,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // Deep links put an <a> inside each operation's toggle button (nested controls).
    deepLinking: false,
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    validatorUrl: null, // its badge would be an image from validator.swagger.io
    persistAuthorization: false, // the token stays in this tab, never in localStorage
  });
});

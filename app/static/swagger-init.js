// Starts Swagger UI on /docs with the options the service wrote into the page's JSON block.
// A file of its own rather than an inline script, so that the page's Content-Security-Policy can
// allow only scripts the service serves.
"use strict";

(function () {
  var block = document.getElementById("swagger-ui-options");
  window.ui = SwaggerUIBundle(JSON.parse(block.textContent));
})();

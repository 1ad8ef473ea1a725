// What every page's script shares: calls to the console's own API with the session's CSRF token, and
// errors shown in the API's structured form.

export function csrfToken() {
  return document.querySelector('meta[name="csrf-token"]')?.content ?? "";
}

// POST (or PUT) to the console; resolves to the JSON answer, throws an ApiError on a non-2xx answer.
export async function callConsole(url, { method = "POST", json, body, headers = {} } = {}) {
  const init = { method, headers: { "X-CSRF-Token": csrfToken(), ...headers }, credentials: "same-origin" };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  const response = await fetch(url, init);
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(answer.error ?? { code: String(response.status), message: response.statusText });
  return answer;
}

export class ApiError extends Error {
  constructor(error) {
    super(error.message);
    this.error = error;
  }
}

// Fill `box` with an API error: its sentence, the fields at fault, its code and reason.
export function showError(box, error) {
  box.replaceChildren();
  const sentence = document.createElement("p");
  sentence.textContent = error.message || "Something went wrong.";
  box.append(sentence);
  if (error.fields?.length) {
    const list = document.createElement("ul");
    for (const violation of error.fields) {
      const item = document.createElement("li");
      const field = document.createElement("code");
      field.textContent = violation.field;
      item.append(field, `: ${violation.description}`);
      list.append(item);
    }
    box.append(list);
  }
  if (error.code) {
    const code = document.createElement("p");
    code.className = "muted";
    code.textContent = [error.code, error.reason].filter(Boolean).join(" · ");
    box.append(code);
  }
  box.hidden = false;
}

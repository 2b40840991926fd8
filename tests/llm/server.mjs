// A tiny OpenAI-compatible chat-completions server over a local GGUF model, for end-to-end tests.
//   node tests/llm/server.mjs --model <file.gguf> [--port 0] [--threads 1] [--max-seconds 20]
// Prints `listening on http://127.0.0.1:<port>` once the model is loaded. scripts/llm-setup
// installs the model and node_modules. It is a test stand-in, not a production server: one request
// at a time, no streaming, deterministic by default (temperature 0 unless the request sets one).
import http from "node:http";
import path from "node:path";
import { parseArgs } from "node:util";
import { getLlama, LlamaCompletion, LlamaText, SpecialTokensText } from "node-llama-cpp";

const { values: args } = parseArgs({
    options: {
        model: { type: "string" }, port: { type: "string", default: "0" }, threads: { type: "string", default: "1" },
        "max-seconds": { type: "string", default: "20" },
    },
});
if (!args.model || ["port", "threads", "max-seconds"].some((k) => !(Number(args[k]) >= 0))) {
    console.error("usage: server.mjs --model <file.gguf> [--port N] [--threads N] [--max-seconds S]");
    process.exit(2);
}
const MODEL_ID = path.basename(args.model).replace(/\.gguf$/i, "");
const CONTEXT_SIZE = 4096;
const DEFAULT_MAX_TOKENS = 256;
// Token counts alone do not bound a request's time on a machine busy building (tokens/s drops
// several-fold), and test clients time out: generation stops after this, as if at max_tokens.
const MAX_SECONDS = Number(args["max-seconds"]);
const MAX_TOKENS_CAP = 1024;
// Bounds put into the grammar where a schema leaves a string/array/map unbounded: a small base
// model decoding greedily can repeat itself forever inside a string, which would end in a
// truncated, unparsable reply. Any value within these bounds still satisfies the caller's schema.
const DEFAULT_MAX_LENGTH = 100, DEFAULT_MAX_ITEMS = 8, DEFAULT_MAX_PROPERTIES = 8;

// Logs go to stderr: stdout carries only the readiness line that the test harness waits for.
const llama = await getLlama({
    gpu: false, build: "never", logLevel: "error",
    logger: (level, message) => process.stderr.write(`llama.cpp ${level}: ${message}\n`),
});
const model = await llama.loadModel({ modelPath: args.model });
// One thread by default: llama.cpp's threads wait for each other at every step, so with 2 threads
// on 2 cores that a build keeps busy a single token took ~20 s; 1 thread still does ~20 tokens/s.
const context = await model.createContext({ contextSize: CONTEXT_SIZE, threads: Number(args.threads) });
const sequence = context.getSequence();
const completion = new LlamaCompletion({ contextSequence: sequence });

class BadRequest extends Error {
    constructor(message, code = null) { super(message); this.code = code; }
}

// node-llama-cpp 3.21 compiles only a subset of JSON Schema into a grammar, never rejects the
// rest and mis-handles some of it: `{}`, anyOf, allOf and an unknown `type` compile to `null`,
// `type: ["object", "null"]` loses the object, a `format` other than date/time/date-time allows
// only "", `#/definitions/...` refs become "any JSON", an object without `properties` allows only
// `{}`. So callers may send full (OpenAI-style) schemas and toGrammarSchema rewrites them:
//   honoured: type (also arrays of types), properties, additionalProperties, enum and const
//             (scalars only), oneOf/anyOf, allOf (shallow-merged), $ref to $defs/definitions,
//             items, prefixItems, min/maxItems, min/maxLength, min/maxProperties,
//             format date-time/date/time
//   minimum/maximum: not expressible in the grammar; out-of-range numbers are clamped afterwards
//   ignored:  exclusiveMinimum/Maximum, multipleOf, pattern, other formats, not, if/then/else,
//             uniqueItems, patternProperties, propertyNames, dependent*, contains, ...
//   `required`: node-llama-cpp always emits every declared property, optional ones included.
// Unconstrained values (`{}`, `true`, the values of a free-form object) are kept shallow, so that
// they stay cheap to generate: a scalar, or a flat array or object of scalars.
const LEAF = { oneOf: [{ type: "string", maxLength: DEFAULT_MAX_LENGTH }, { type: "number" }, { type: "boolean" }, { type: "null" }] };
const ANY = { oneOf: [...LEAF.oneOf, { type: "array", items: LEAF, maxItems: DEFAULT_MAX_ITEMS },
    { type: "object", additionalProperties: LEAF, maxProperties: DEFAULT_MAX_PROPERTIES }] };
const FORMATS = new Set(["date-time", "date", "time"]);
const isObj = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const isLiteral = (v) => v === null || ["string", "number", "boolean"].includes(typeof v);

function toGrammarSchema(s) {
    if (s === true || (isObj(s) && Object.keys(s).every((k) => ["title", "description", "$schema", "$id", "default", "examples"].includes(k))))
        return ANY;
    if (!isObj(s)) throw new BadRequest("invalid JSON schema: every schema must be an object or true", "invalid_json_schema");
    const defsIn = { ...(isObj(s.definitions) ? s.definitions : {}), ...(isObj(s.$defs) ? s.$defs : {}) };
    const defs = Object.keys(defsIn).length ? { $defs: Object.fromEntries(Object.entries(defsIn).map(([k, v]) => [k, toGrammarSchema(v)])) } : {};
    if (typeof s.$ref === "string") // other refs ("#", URLs) would become node-llama-cpp's unbounded "any JSON"
        return /^#\/(\$defs|definitions)\/[^/]+$/.test(s.$ref) ? { $ref: s.$ref.replace("#/definitions/", "#/$defs/"), ...defs } : ANY;
    if (s.const !== undefined) {
        if (!isLiteral(s.const)) throw new BadRequest("unsupported JSON schema: const must be a string, number, boolean or null", "invalid_json_schema");
        return { const: s.const };
    }
    if (Array.isArray(s.enum)) {
        if (!s.enum.length || !s.enum.every(isLiteral)) throw new BadRequest("unsupported JSON schema: enum must list strings, numbers, booleans or null", "invalid_json_schema");
        return { enum: s.enum };
    }
    const alternatives = s.oneOf ?? s.anyOf;
    if (Array.isArray(alternatives)) return { oneOf: alternatives.map(toGrammarSchema), ...defs };
    if (Array.isArray(s.allOf)) {
        const { allOf, ...rest } = s;
        const parts = [rest, ...allOf.filter(isObj)];
        const merged = Object.assign({}, ...parts);
        if (parts.some((p) => p.properties)) merged.properties = Object.assign({}, ...parts.map((p) => p.properties));
        return toGrammarSchema(merged);
    }
    const types = Array.isArray(s.type) ? s.type : s.type ? [s.type] : s.properties ? ["object"] : s.items ? ["array"] : null;
    if (!types) return ANY;
    if (types.length > 1) return { oneOf: types.map((type) => toGrammarSchema({ ...s, type })), ...defs };
    const out = { type: types[0], ...defs };
    switch (types[0]) {
        case "string":
            if (FORMATS.has(s.format)) { out.format = s.format; break; }
            out.minLength = s.minLength ?? 0;
            out.maxLength = s.maxLength ?? Math.max(DEFAULT_MAX_LENGTH, out.minLength);
            break;
        case "object": {
            const props = isObj(s.properties) ? s.properties : {};
            out.properties = Object.fromEntries(Object.entries(props).map(([k, v]) => [k, toGrammarSchema(v)]));
            // JSON Schema's default is "extra keys allowed"; an object with no declared keys then
            // means a free-form map. With declared keys, extras are left out (as OpenAI strict mode).
            const extra = s.additionalProperties ?? (Object.keys(props).length === 0);
            out.additionalProperties = extra === true ? LEAF : extra === false ? false : toGrammarSchema(extra);
            if (s.minProperties != null) out.minProperties = s.minProperties;
            out.maxProperties = s.maxProperties ?? (out.additionalProperties ? Object.keys(props).length + DEFAULT_MAX_PROPERTIES : undefined);
            break;
        }
        case "array":
            if (Array.isArray(s.items)) out.prefixItems = s.items.map(toGrammarSchema); // draft-4 tuples
            else out.items = s.items === undefined ? ANY : toGrammarSchema(s.items);
            if (Array.isArray(s.prefixItems)) out.prefixItems = s.prefixItems.map(toGrammarSchema);
            if (s.minItems != null) out.minItems = s.minItems;
            out.maxItems = s.maxItems ?? Math.max(DEFAULT_MAX_ITEMS, s.minItems ?? 0, out.prefixItems?.length ?? 0);
            break;
        case "number": case "integer": case "boolean": case "null":
            break;
        default:
            throw new BadRequest(`unsupported JSON schema type ${JSON.stringify(types[0])}`, "invalid_json_schema");
    }
    return out;
}

// The grammar cannot express numeric ranges, so numbers outside minimum/maximum are clamped after
// generation (walking the caller's original schema), so that the reply validates against it.
function clampNumbers(value, s, defs = {}) {
    if (!isObj(s) || value === null || typeof value !== "object" && typeof value !== "number") return value;
    defs = { ...defs, ...(s.definitions ?? {}), ...(s.$defs ?? {}) };
    if (typeof s.$ref === "string") return clampNumbers(value, defs[s.$ref.split("/").pop()], defs);
    if (typeof value === "number") {
        const { minimum: lo, maximum: hi } = s;
        return typeof lo === "number" && value < lo ? lo : typeof hi === "number" && value > hi ? hi : value;
    }
    if (Array.isArray(value)) {
        const tuple = Array.isArray(s.items) ? s.items : s.prefixItems;
        return value.map((v, i) => clampNumbers(v, tuple?.[i] ?? (isObj(s.items) ? s.items : undefined), defs));
    }
    const props = { ...(s.allOf ?? []).reduce((a, b) => ({ ...a, ...b.properties }), {}), ...s.properties };
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, clampNumbers(v, props[k] ?? s.additionalProperties, defs)]));
}

const grammars = new Map(); // compiled grammars by schema text; tests reuse a handful of schemas
async function grammarFor(schema) {
    const key = JSON.stringify(schema);
    if (!grammars.has(key)) {
        if (grammars.size >= 32) grammars.delete(grammars.keys().next().value);
        try {
            grammars.set(key, await llama.createGrammarForJsonSchema(toGrammarSchema(schema)));
        } catch (err) {
            if (err instanceof BadRequest) throw err;
            throw new BadRequest(`unsupported JSON schema: ${err.message}`, "invalid_json_schema");
        }
    }
    return grammars.get(key);
}

// The model is a base model without a chat template. Gemma's own turn markup (as special tokens)
// still steers it to short, on-topic values, better than a plain "User:/Assistant:" transcript,
// which is kept for models whose vocabulary lacks the markup. Either way the grammar does the rest.
const gemmaTurns = model.tokenize("<start_of_turn>", true).length === 1;
const TURN = new SpecialTokensText("<start_of_turn>"), END = new SpecialTokensText("<end_of_turn>");
function renderPrompt(messages) {
    if (!Array.isArray(messages) || messages.length === 0) throw new BadRequest("messages must be a non-empty array", "invalid_messages");
    const roles = { system: "System", developer: "System", user: "User", assistant: "Assistant", tool: "Tool" };
    const turns = messages.map((m, i) => {
        if (!isObj(m) || !roles[m.role]) throw new BadRequest(`messages[${i}].role must be one of ${Object.keys(roles).join(", ")}`, "invalid_messages");
        let text = m.content ?? "";
        if (Array.isArray(text)) {
            text = text.map((part, j) => {
                if (!isObj(part) || part.type !== "text" || typeof part.text !== "string")
                    throw new BadRequest(`messages[${i}].content[${j}] must be {type: "text", text}`, "invalid_messages");
                return part.text;
            }).join("\n");
        } else if (typeof text !== "string") throw new BadRequest(`messages[${i}].content must be a string or an array of text parts`, "invalid_messages");
        return { role: m.role, text: text.trim() };
    });
    if (!gemmaTurns) return LlamaText([...turns.map((t) => `${roles[t.role]}: ${t.text}\n\n`), "Assistant:"]);
    // Gemma has only user and model turns: consecutive non-assistant messages share a user turn.
    const merged = [];
    for (const t of turns) {
        const role = t.role === "assistant" ? "model" : "user";
        if (merged.at(-1)?.role === role) merged.at(-1).text += `\n\n${t.text}`;
        else merged.push({ role, text: t.text });
    }
    return LlamaText([...merged.flatMap((t) => [TURN, `${t.role}\n${t.text}`, END, "\n"]), TURN, "model\n"]);
}

async function chatCompletion(body, clientGone) {
    if (!isObj(body)) throw new BadRequest("the request body must be a JSON object");
    if (body.stream) throw new BadRequest("stream is not supported by this test server", "unsupported_parameter");
    if (body.n != null && body.n !== 1) throw new BadRequest("only n = 1 is supported", "unsupported_parameter");
    const prompt = renderPrompt(body.messages);
    const requested = body.max_completion_tokens ?? body.max_tokens ?? DEFAULT_MAX_TOKENS;
    if (!Number.isInteger(requested) || requested < 1) throw new BadRequest("max_tokens must be a positive integer", "invalid_value");
    const maxTokens = Math.min(requested, MAX_TOKENS_CAP);
    const temperature = body.temperature ?? 0;
    if (typeof temperature !== "number" || temperature < 0 || temperature > 2) throw new BadRequest("temperature must be a number in [0, 2]", "invalid_value");
    if (body.seed != null && !Number.isInteger(body.seed)) throw new BadRequest("seed must be an integer", "invalid_value");

    const format = body.response_format ?? { type: "text" };
    let grammar, schema;
    if (!isObj(format)) throw new BadRequest("response_format must be an object", "invalid_value");
    if (format.type === "json_schema") {
        schema = format.json_schema?.schema;
        if (!isObj(schema)) throw new BadRequest("response_format.json_schema.schema must be a JSON schema object", "invalid_json_schema");
        grammar = await grammarFor(schema);
    } else if (format.type === "json_object") {
        grammar = await grammarFor({ type: "object" });
    } else if (format.type !== "text") {
        throw new BadRequest(`unsupported response_format.type ${JSON.stringify(format.type)}`, "invalid_value");
    }

    // Counted the way LlamaCompletion tokenizes its input, plus the BOS token it prepends.
    const promptTokens = prompt.tokenize(model.tokenizer, "trimLeadingSpace").length + (model.tokens.bos != null ? 1 : 0);
    if (promptTokens + maxTokens > CONTEXT_SIZE)
        throw new BadRequest(`prompt (${promptTokens} tokens) + max_tokens (${maxTokens}) exceed the context of ${CONTEXT_SIZE} tokens`, "context_length_exceeded");
    // A fresh KV cache each time: reusing the previous prompt's cached prefix changes how the
    // prompt is batched, which flips greedy choices, and the same request must give the same reply.
    await sequence.clearHistory();
    let completionTokens = 0;
    const { response, metadata } = await completion.generateCompletionWithMeta(prompt, {
        maxTokens, temperature, seed: body.seed ?? undefined, grammar,
        signal: AbortSignal.any([AbortSignal.timeout(MAX_SECONDS * 1000), clientGone]), stopOnAbortSignal: true,
        onToken: (tokens) => { completionTokens += tokens.length; },
        // Free text from a base model would otherwise go on to write the next turns itself.
        customStopTriggers: grammar ? undefined : gemmaTurns ? [LlamaText(END), LlamaText(TURN)] : ["\nUser:", "\nSystem:", "\nAssistant:"],
    });
    let content = response.trim();
    const truncated = metadata.stopReason === "maxTokens" || metadata.stopReason === "abort";
    if (schema && !truncated) {
        try {
            const parsed = JSON.parse(content), clamped = clampNumbers(parsed, schema);
            if (JSON.stringify(clamped) !== JSON.stringify(parsed)) content = JSON.stringify(clamped);
        } catch { /* returned as generated; the caller's validation reports it */ }
    }
    return {
        id: `chatcmpl-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`,
        object: "chat.completion",
        created: Math.floor(Date.now() / 1000),
        model: MODEL_ID,
        choices: [{
            index: 0,
            message: { role: "assistant", content, refusal: null },
            logprobs: null,
            finish_reason: truncated ? "length" : "stop",
        }],
        usage: { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens },
    };
}

function send(res, status, obj) {
    const text = JSON.stringify(obj);
    res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
    res.end(text);
}
function sendError(res, status, message, type, code = null) {
    send(res, status, { error: { message, type, param: null, code } });
}

let queue = Promise.resolve(); // one generation at a time: there is one context sequence
const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://localhost").pathname.replace(/\/+$/, "");
    if (url === "/v1/models" && req.method === "GET")
        return send(res, 200, { object: "list", data: [{ id: MODEL_ID, object: "model", created: 0, owned_by: "themis-test" }] });
    if (url !== "/v1/chat/completions")
        return sendError(res, 404, `no route for ${req.method} ${req.url}`, "invalid_request_error", "not_found");
    if (req.method !== "POST")
        return sendError(res, 405, `use POST for ${url}`, "invalid_request_error", "method_not_allowed");
    const chunks = [];
    let size = 0;
    req.on("data", (c) => { size += c.length; if (size <= 4 << 20) chunks.push(c); });
    // A client that hung up (timed out) frees the queue instead of waiting for its generation.
    const gone = new AbortController();
    res.on("close", () => gone.abort());
    req.on("end", () => {
        queue = queue.then(async () => {
            if (gone.signal.aborted) return;
            const started = Date.now();
            try {
                if (size > 4 << 20) throw new BadRequest("request body over 4 MiB", "request_too_large");
                let body;
                try { body = JSON.parse(Buffer.concat(chunks).toString("utf8")); } catch (err) { throw new BadRequest(`invalid JSON body: ${err.message}`, "invalid_json"); }
                const reply = await chatCompletion(body, gone.signal);
                send(res, 200, reply);
                const u = reply.usage;
                console.error(`POST ${url} 200 ${Date.now() - started} ms prompt=${u.prompt_tokens} completion=${u.completion_tokens} finish=${reply.choices[0].finish_reason}`);
            } catch (err) {
                const bad = err instanceof BadRequest;
                if (!res.headersSent) sendError(res, bad ? 400 : 500, err.message, bad ? "invalid_request_error" : "server_error", err.code ?? null);
                console.error(`POST ${url} ${bad ? 400 : 500} ${Date.now() - started} ms: ${bad ? err.message : err.stack}`);
            }
        });
    });
});
server.listen(Number(args.port), "127.0.0.1", () => {
    process.stdout.write(`listening on http://127.0.0.1:${server.address().port}\n`);
});
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));

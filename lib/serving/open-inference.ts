/**
 * The Open Inference Protocol (KServe v2) as kserve's `docs/predict-api/v2/required_api.md`
 * writes it, for a model of one FP32 input named `input` and two outputs, `output` (the logits
 * of the exit each sample took) and `exit` (that exit's index, INT32):
 *
 *   - "Inference Request JSON Object": `inputs` (each `name`, `shape`, `datatype`, `data`,
 *     optional `parameters`), optional `id`, `parameters` and `outputs` (`[{ name }]`).
 *   - "Tensor Data": `data` is flat or nested arrays in row-major order, of the datatype's values.
 *   - "Parameters": each value a string, a number or a boolean.
 *   - "Request Output": when `outputs` is given, only those are returned; a name the model
 *     does not have is an error.
 *
 * A request that breaks a rule is a BadRequestError (HTTP 400) naming the rule.
 */
import { BadRequestError } from './errors';
import { InferResult } from './server';

export const INPUT_NAME = 'input';
export const OUTPUT_NAMES = ['output', 'exit'] as const;
type OutputName = (typeof OUTPUT_NAMES)[number];

const PARAMETERS_SCHEMA = { type: 'object', additionalProperties: { type: ['string', 'number', 'boolean'] } };

/** The JSON schema of the request body ("Inference Request JSON Object"); the rest is checked by `parseInferRequest`. */
export const INFER_REQUEST_SCHEMA = {
  type: 'object', required: ['inputs'],
  properties: {
    id: { type: 'string' },
    parameters: PARAMETERS_SCHEMA,
    inputs: {
      type: 'array', minItems: 1, maxItems: 1,
      items: {
        type: 'object', required: ['name', 'shape', 'datatype', 'data'],
        properties: {
          name: { type: 'string' },
          shape: { type: 'array', items: { type: 'integer', minimum: 1 }, minItems: 1 },
          datatype: { type: 'string' },
          parameters: PARAMETERS_SCHEMA,
          data: { type: 'array' },
        },
      },
    },
    outputs: {
      type: 'array',
      items: { type: 'object', required: ['name'], properties: { name: { type: 'string' }, parameters: PARAMETERS_SCHEMA } },
    },
  },
};

/** What a request asks for, checked. */
export interface InferRequest {
  id?: string;
  /** FP32 values, or INT64 token ids (a server of sequences). */
  values: Float32Array | number[];
  shape: number[];
  outputs: OutputName[];
}

/** The values of flat or nested `data`, in row-major order; null or anything but a number is refused, naming where. */
function flatten(data: unknown[], where: string, into: number[]): number[] {
  data.forEach((item, i) => {
    if (Array.isArray(item)) flatten(item, `${where}[${i}]`, into);
    else if (typeof item === 'number') into.push(item);
    else throw new BadRequestError(`input '${INPUT_NAME}': ${where}[${i}] is ${item === null ? 'null' : JSON.stringify(item)}; ` +
      'tensor data holds numbers of its datatype (Open Inference Protocol, "Tensor Data")');
  });
  return into;
}

/** Checks a request body against the model (after the schema): input name and datatype, data, requested outputs. */
export function parseInferRequest(body: {
  id?: string; inputs: Array<{ name: string; shape: number[]; datatype: string; data: unknown[] }>; outputs?: Array<{ name: string }>;
}, datatype: 'FP32' | 'INT64' = 'FP32'): InferRequest {
  const [input] = body.inputs;
  if (input.name !== INPUT_NAME) {
    throw new BadRequestError(`this model has no input '${input.name}'; its input is '${INPUT_NAME}' (GET /v2/models/NAME lists it)`);
  }
  if (input.datatype !== datatype) throw new BadRequestError(`input '${input.name}' has datatype ${input.datatype}; this model takes ${datatype}`);
  const values = flatten(input.data, 'data', []);
  if (datatype === 'INT64') {
    const bad = values.findIndex((v) => !Number.isSafeInteger(v));
    if (bad >= 0) throw new BadRequestError(`input '${input.name}': value ${bad} is ${values[bad]}, not an INT64 (a whole number)`);
  }
  const outputs = (body.outputs ?? OUTPUT_NAMES.map((name) => ({ name }))).map(({ name }) => {
    if (!(OUTPUT_NAMES as readonly string[]).includes(name)) {
      throw new BadRequestError(`this model has no output '${name}'; its outputs are ${OUTPUT_NAMES.map((n) => `'${n}'`).join(' and ')}`);
    }
    return name as OutputName;
  });
  return { id: body.id, values: datatype === 'INT64' ? values : Float32Array.from(values), shape: input.shape, outputs };
}

/** The "Inference Response JSON Object" for the answers to one request, with the outputs it asked for. */
export function inferResponse(modelName: string, request: InferRequest, results: InferResult[]): object {
  const width = results[0].output.length;
  const tensors: Record<OutputName, object> = {
    output: { name: 'output', datatype: 'FP32', shape: [results.length, width], data: results.flatMap((r) => Array.from(r.output)) },
    exit: { name: 'exit', datatype: 'INT32', shape: [results.length], data: results.map((r) => r.exit) },
  };
  return {
    model_name: modelName, model_version: '1', ...(request.id !== undefined ? { id: request.id } : {}),
    outputs: request.outputs.map((name) => tensors[name]),
  };
}

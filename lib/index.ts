/**
 * torch-early-exit: early-exit networks for Node.js over LibTorch.
 *
 * ```ts
 * import { jit, nn, EarlyExitModel } from 'torch-early-exit';
 * const model = new EarlyExitModel(jit.load('resnet20.pt'), [
 *   ['layer1.2.relu2', nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))],
 * ]);
 * const [exit0, final] = model.forward(images);
 * ```
 */
import * as torch from './torch/torch';
import * as nn from './torch/nn';
import * as jit from './torch/jit';
import * as optim from './torch/optim';
import * as distributed from './distributed';

export { torch, nn, jit, optim, distributed };
export { Tensor } from './torch/tensor';
export type { NestedArray, TensorOptions, TypedArray } from './torch/tensor';
export type { DType, Device } from './torch/dtype';
export type { MemoryStats } from './binding';
export { ScriptModule } from './torch/jit';
export type { ForwardHook, RemovableHandle, LoadOptions, InferenceOptions, ChainPrimitive, ChainPlanReport, ChainProfile } from './torch/jit';
export { EarlyExitMgr } from './early-exit/exit-mgr';
export type { ExitBranch, ExitsDef } from './early-exit/exit-mgr';
export { EarlyExitModel } from './early-exit/model';
export { earlyExitLoss, lossWeightSchedule } from './early-exit/loss';
export type { EarlyExitLossOptions } from './early-exit/loss';
export { trainEarlyExit, trainEarlyExitAsync, evaluateAccuracy } from './early-exit/trainer';
export type { TrainOptions, BatchProgress, LabelledData } from './early-exit/trainer';
export { EarlyExitStats } from './early-exit/stats';
export type { EarlyExitReport } from './early-exit/stats';
export { exitScores, exitDecisions } from './early-exit/criteria';
export type { ExitCriterion, LabelFreeCriterion } from './early-exit/criteria';
export type { EarlyExitPolicy, EarlyExitResult, EarlyExitAsyncOptions } from './early-exit/model';
export { calibrateThresholds, collectOutputs, measureBaselineLatency, measureExitLatencies, policyOf } from './early-exit/calibrate';
export type { Calibration, CalibrationOptions, TradeOffPoint, HeldOutOutputs } from './early-exit/calibrate';
export type { Guarantee, Certificate } from './early-exit/guarantee';
export { advise, adviceSummary, calibrateSet, candidatePoints, chooseExits, costsOf, defaultRamp } from './early-exit/advise';
export type {
  Advice, AdvisedPoint, AdviseCriterion, AdviseOptions, Budget, CandidateCosts, CandidatePoint, ChooseOptions, ExitChoice, SearchStep,
} from './early-exit/advise';
export { parseBranchSpec } from './torch/branch-spec';
export { serveOneAtATime } from './early-exit/serving';
export {
  EarlyExitServer, DynamicBatcher, createHttpApp, BadRequestError, RequestTimeoutError, ServerClosedError, ServerOverloadedError,
} from './serving';
export type {
  ServerOptions, ServerStats, InferResult, BatcherOptions, BatcherStats, HttpOptions, Clock,
} from './serving';
export type { ServedExit, ServingReport } from './early-exit/serving';
export { loadMnist, shapeDigits } from './data/mnist';
export type { DigitSet, MnistSplit } from './data/mnist';
export { emailLabels, emailText, halveByGroup, isHeldOut, loadSpamAssassin, splitEmails } from './data/spam-assassin';
export type { Email, EmailSplit } from './data/spam-assassin';
export { WordTokenizer } from './text/tokenizer';
export type { BuildOptions, EncodedBatch, TokenizerFile } from './text/tokenizer';
export { saveCheckpoint, loadCheckpoint } from './early-exit/checkpoint';
export type { SaveCheckpointOptions, LoadedCheckpoint } from './early-exit/checkpoint';

import { Tensor, nn, torch } from '../lib';
import { parseBranchSpec } from '../lib/torch/branch-spec';

const shapeOf = (module: nn.Module, input: number[]) => (torch.noGrad(() => module.forward(torch.ones(input))) as Tensor).shape;

describe('exit branch specs in PyTorch syntax', () => {
  it('takes PyTorch\'s positional order, keywords, tuples and None as PyTorch does', () => {
    // MaxPool2d(kernel_size, stride, padding, dilation, return_indices, ceil_mode): ceil mode on a 5x5 map gives 3x3.
    expect(shapeOf(parseBranchSpec('MaxPool2d(2, 2, 0, 1, False, True)'), [1, 1, 5, 5])).toEqual([1, 1, 3, 3]);
    expect(shapeOf(parseBranchSpec('MaxPool2d(2, ceil_mode=True)'), [1, 1, 5, 5])).toEqual([1, 1, 3, 3]);
    expect(shapeOf(parseBranchSpec('MaxPool2d(2)'), [1, 1, 5, 5])).toEqual([1, 1, 2, 2]);
    expect(shapeOf(parseBranchSpec('AvgPool2d(kernel_size=(2, 3), stride=None)'), [1, 1, 6, 6])).toEqual([1, 1, 3, 2]);
    expect(shapeOf(parseBranchSpec("Conv2d(1, 4, 3, padding=1, bias=False, padding_mode='zeros')"), [1, 1, 6, 6])).toEqual([1, 4, 6, 6]);
    const branch = parseBranchSpec(' AdaptiveAvgPool2d((1, 1)), Flatten(start_dim=1), Dropout(p=0.2), Linear(in_features=4, out_features=3, bias=True) ');
    expect(shapeOf(branch.eval(), [2, 4, 7, 7])).toEqual([2, 3]);
    expect(branch.namedParameters().map(([name]) => name)).toEqual(['3.weight', '3.bias']);
    expect(parseBranchSpec('BatchNorm2d(4, eps=1e-3, momentum=None)').namedBuffers().map(([name]) => name)).toContain('running_mean');
    // DeeBERT's off-ramp on [batch, tokens, features]: the [CLS] token, LayerNorm, pooler, classifier.
    const ramp = parseBranchSpec("Select(1, 0), LayerNorm((8,), eps=1e-6, elementwise_affine=True), Linear(8, 8), Tanh(), GELU(approximate='tanh'), Linear(8, 2)");
    expect(shapeOf(ramp, [3, 5, 8])).toEqual([3, 2]);
    expect(ramp.namedParameters().map(([name]) => name)).toEqual(['1.weight', '1.bias', '2.weight', '2.bias', '5.weight', '5.bias']);
  });

  it.each([
    ['Lineal(784, 10)', /unknown layer 'Lineal'/],
    ['Linear(784, 10, size=3)', /Linear has no argument 'size' \(PyTorch's arguments: in_features, out_features, bias\)/],
    ['Linear(784, out_features=10, 3)', /a positional argument of Linear after a keyword argument/],
    ['Linear(1, 2, True, 4)', /Linear takes at most 3 positional argument\(s\)/],
    ['MaxPool2d(2, return_indices=True)', /MaxPool2d\(return_indices=true\) is not supported in an exit branch/],
    ['Linear(784 10)', /cannot read the branch spec 'Linear\(784 10\)' at '10\)': expected ',' or '\)'/],
    ['Linear(784, 10) Flatten()', /expected ',' between layers/],
    ['Linear(784, out_features=10, out_features=5)', /Linear got 'out_features' twice/],
    ['', /needs at least one layer/],
  ])('%j fails, saying why', (spec, message) => {
    expect(() => parseBranchSpec(spec)).toThrow(message);
  });
});

import FlareCLI
import FlareEval
import FlareTensor

BLAS.selectKernelsForThisCPU()
ToolMain.run(EvalCommand.spec) { arguments in try EvalCommand.run(arguments) }

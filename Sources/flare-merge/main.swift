import FlareCLI
import FlareMerge
import FlareTensor

BLAS.selectKernelsForThisCPU()
ToolMain.run(MergeCommand.spec) { arguments in try MergeCommand.run(arguments) }

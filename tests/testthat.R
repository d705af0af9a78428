library(testthat)
library(vbayes)
test_check("vbayes")

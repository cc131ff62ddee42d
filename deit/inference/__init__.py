"""Running a trained model: eager or Paddle Inference runners, --predict, --export."""

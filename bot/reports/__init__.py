"""What the office takes away from the bot: the chart, the spreadsheet and the stairwell posters."""
